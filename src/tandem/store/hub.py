"""The Hugging Face Hub as a source of manifests and file bytes.

Settings come from `huggingface_hub` (HF_ENDPOINT, HF_TOKEN or a saved login, HF_HUB_OFFLINE),
and so does the file list (`HfApi.model_info` with file metadata: every file's size and hash).
File bytes are fetched here, over plain HTTP with Range requests, because a Tandem download
must resume after the process is killed and be checked against the Hub's hash; the URL is the
Hub's own resolve URL (`hf_hub_url`), whose redirects lead to the CDN.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
from huggingface_hub import HfApi, constants, get_token, hf_hub_url
from huggingface_hub.utils import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    build_hf_headers,
)

from tandem.errors import TandemError
from tandem.store.manifest import RepoFile, RepoManifest
from tandem.store.transfer import ByteStream, SourceError, open_http_stream

HUB_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class HubUnreachable(TandemError):
    """The Hub cannot be asked now (offline mode, no network, or it is failing)."""


class HubRefused(TandemError):
    """The Hub answered, and the answer is no: no such repo or revision, or no access."""


def _is_transport_error(error: BaseException) -> bool:
    """Network failures of whichever HTTP library `huggingface_hub` uses (requests, httpx, httpx2)."""
    library = type(error).__module__.split(".")[0]
    return isinstance(error, OSError) or library in ("httpx", "httpx2", "requests", "urllib3")


class Hub:
    def __init__(self, endpoint: str | None = None, token: str | None = None, offline: bool | None = None):
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token if token is not None else get_token()
        self.offline = constants.HF_HUB_OFFLINE if offline is None else offline
        self.label = "hub"
        self._client: httpx.Client | None = None  # shared across files and threads (httpx allows it)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(follow_redirects=True, timeout=HUB_TIMEOUT)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def gated_message(self, repo_id: str) -> str:
        page = f"{self.endpoint}/{repo_id}"
        if self.token:
            return (
                f"{repo_id} is gated and the token in use has no access to it: accept its license at "
                f"{page} with the account the token belongs to"
            )
        return (
            f"{repo_id} is gated: accept its license at {page}, then set HF_TOKEN to an access token "
            "of that account (or run `hf auth login`)"
        )

    def manifest(self, repo_id: str, revision: str) -> RepoManifest:
        """Every file of `repo_id` at `revision`, with sizes and hashes, and the commit it is at."""
        if self.offline:
            raise HubUnreachable("HF_HUB_OFFLINE is set")
        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        try:
            info = api.model_info(repo_id, revision=revision, files_metadata=True, timeout=30)
        except GatedRepoError:
            raise HubRefused(self.gated_message(repo_id)) from None
        except RevisionNotFoundError:
            raise HubRefused(f"{repo_id} has no revision {revision!r} on {self.endpoint}") from None
        except RepositoryNotFoundError:
            hint = "" if self.token else "; a private repo needs HF_TOKEN"
            raise HubRefused(f"Hugging Face repo {repo_id} not found at {self.endpoint}{hint}") from None
        except OfflineModeIsEnabled:
            raise HubUnreachable("HF_HUB_OFFLINE is set") from None
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else "?"
            if status == 401:
                raise HubRefused(f"the Hub at {self.endpoint} refused the token in HF_TOKEN") from None
            raise HubUnreachable(f"the Hub at {self.endpoint} answered {status}") from None
        except Exception as error:
            if not _is_transport_error(error):
                raise
            raise HubUnreachable(
                f"cannot reach the Hub at {self.endpoint} ({type(error).__name__})"
            ) from None
        if info.gated and not self.token:
            raise HubRefused(self.gated_message(repo_id))
        if not info.sha or info.siblings is None:
            raise HubUnreachable(f"the Hub at {self.endpoint} sent no file list for {repo_id}")
        files = tuple(
            RepoFile(s.rfilename, s.lfs.size, s.lfs.sha256)
            if s.lfs is not None
            else RepoFile(s.rfilename, int(s.size or 0), s.blob_id)
            for s in info.siblings
        )
        return RepoManifest(repo_id, info.sha, files)

    @contextlib.contextmanager
    def open(self, repo_id: str, commit: str, file: RepoFile, offset: int) -> Iterator[ByteStream]:
        """The bytes of `file` from `offset` on (or from 0, if the server ignores the range)."""
        if self.offline:
            raise SourceError("HF_HUB_OFFLINE is set")
        url = hf_hub_url(repo_id, file.name, revision=commit, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token or False)
        try:
            with open_http_stream(self.client, url, headers, offset) as stream:
                yield stream
        except SourceError as error:
            if error.status in (401, 403) and error.code in ("GatedRepo", None):
                raise SourceError(self.gated_message(repo_id), status=error.status) from None
            if error.status == 404:
                raise SourceError(f"{file.name} is not in {repo_id} at {commit[:12]}", status=404) from None
            raise
