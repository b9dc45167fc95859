"""The node's model files: fetching what its runners need (from peers first, then the Hub),
serving its own cache to peers, and the download progress it shows in its heartbeats.

Peers are asked, not told: a node that needs a repo asks every peer for the files it holds at a
commit (`GET /internal/files/manifest`), then fetches each file it lacks from a peer that has it
(`GET /internal/files/blob`, with Range), checking the bytes against the file's hash. Requests
are signed with the cluster secret, so only members of the cluster can read a node's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import httpx

from tandem.cluster.auth import NONCE_HEADER, AuthError, sign_request, verify_request
from tandem.cluster.topology import DownloadProgress
from tandem.errors import TandemError
from tandem.model.stage import LayerRange, StageSpec
from tandem.node.control import REPLY_METHOD
from tandem.protocol import codec
from tandem.protocol.control import PreparedStage, PrepareStage
from tandem.store.cache import RepoCache
from tandem.store.fetch import ModelFetcher
from tandem.store.manifest import RepoFile, RepoManifest
from tandem.store.names import COMMIT_HASH, is_repo_id, is_revision
from tandem.store.progress import DownloadBoard, DownloadTracker
from tandem.store.transfer import ByteStream, FileSource, open_http_stream

if TYPE_CHECKING:
    from tandem.cluster.state import Instance
    from tandem.node.node import Node

log = logging.getLogger("tandem.model_files")

MANIFEST_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
FILE_TIMEOUT = httpx.Timeout(60.0, connect=3.0)
PREPARE_TIMEOUT = 24 * 3600.0  # a node may download hundreds of GB before its runner can start
PULL_REPORT_SECONDS = 0.25


class PeerFiles:
    """One peer's cache, reached through its signed `/internal/files` routes."""

    def __init__(self, client: httpx.Client, node_id: str, secret: bytes, peer_id: str, address: str) -> None:
        self.client = client
        self.node_id = node_id
        self.secret = secret
        self.peer_id = peer_id
        self.address = address
        self.label = f"peer {peer_id}"

    def _signed(self, target: str) -> dict[str, str]:
        return sign_request(self.secret, self.node_id, "GET", target, target=self.peer_id)

    def manifest(self, repo_id: str, revision: str) -> RepoManifest | None:
        """The files this peer holds of `repo_id` at `revision`; None when it holds none."""
        target = "/internal/files/manifest?" + urlencode({"repo": repo_id, "revision": revision})
        try:
            headers = self._signed(target)
            response = self.client.get(
                f"http://{self.address}{target}", headers=headers, timeout=MANIFEST_TIMEOUT
            )
            reply = verify_request(self.secret, REPLY_METHOD, target, response.content, response.headers)
            if reply.nonce != headers[NONCE_HEADER]:
                raise AuthError("the manifest reply was signed for another request")
            if response.status_code != 200:
                return None
            manifest = codec.decode(RepoManifest, response.content)
        except (httpx.HTTPError, AuthError, TandemError, ValueError, KeyError) as error:
            log.info("peer %s gave no manifest for %s: %s", self.peer_id, repo_id, error)
            return None
        return manifest if manifest.repo_id == repo_id and manifest.files else None

    @contextlib.contextmanager
    def open(self, repo_id: str, commit: str, file: RepoFile, offset: int) -> Iterator[ByteStream]:
        query = urlencode({"repo": repo_id, "commit": commit, "file": file.name})
        target = f"/internal/files/blob?{query}"
        url = f"http://{self.address}{target}"
        with open_http_stream(self.client, url, self._signed(target), offset) as stream:
            yield stream


class ClusterPeers:
    """The other nodes of the cluster as a `PeerDirectory` for the fetcher (asked in parallel)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.client = httpx.Client(timeout=FILE_TIMEOUT)

    def manifests(self, repo_id: str, revision: str) -> list[tuple[FileSource, RepoManifest]]:
        peers = [
            PeerFiles(self.client, self.node.node_id, self.node.secret, info.node_id, info.address)
            for info in self.node.state.nodes
            if info.node_id != self.node.node_id
        ]
        if not peers:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(peers))) as pool:
            answers = list(pool.map(lambda peer: peer.manifest(repo_id, revision), peers))
        return [(peer, manifest) for peer, manifest in zip(peers, answers, strict=True) if manifest]


class ModelFiles:
    """What `InstanceManager` and the `/internal/files` routes use."""

    def __init__(self, node: Node, board: DownloadBoard) -> None:
        self.node = node
        self.board = board
        # Names come from requests: never from what happens to exist under the working directory.
        self.fetcher = ModelFetcher(peers=ClusterPeers(node), board=self.board, relative_paths=False)

    # --- fetching ---------------------------------------------------------------------------------

    def config_dir(self, model: str) -> Path:
        """A directory with `model`'s config and tokenizer files (what placement reads). Blocking."""
        return self.fetcher.ensure(model, metadata_only=True)

    def pinned(self, model: str) -> str:
        """`model` at the commit this node fetched its config from, so every runner reads the same."""
        return self.fetcher.pinned_name(model)

    async def ensure_stage(self, model: str, stage: StageSpec) -> Path:
        """A directory holding the files of `stage`, fetched first if need be."""
        return await asyncio.to_thread(self.fetcher.ensure, model, stage)

    async def pull(self, model: str) -> AsyncIterator[DownloadProgress]:
        """Fetch every file of `model` to this node (`ollama pull`): its download's figures every
        PULL_REPORT_SECONDS while it runs, then its last; nothing when every file was here.
        A client that stops listening does not stop the download. Raises TandemError."""
        trackers: list[DownloadTracker] = []
        fetching = asyncio.ensure_future(
            asyncio.to_thread(self.fetcher.ensure, model, None, False, trackers.append)
        )
        while not fetching.done():
            await asyncio.wait({fetching}, timeout=PULL_REPORT_SECONDS)
            if trackers and not fetching.done():
                yield trackers[0].snapshot()
        fetching.result()
        if trackers:
            yield trackers[0].snapshot()

    async def prepare_instance(self, instance: Instance) -> None:
        """Every runner's node fetches its files at once, before any runner starts: a runner that
        started first would otherwise wait in its process group while the others download."""
        model = self.pinned(instance.model)
        num_layers = instance.placement.num_layers

        async def prepare(node_id: str, layers: LayerRange) -> None:
            if node_id == self.node.node_id:
                await self.ensure_stage(model, StageSpec(layers, num_layers))
                return
            address = self.node.reachable_address(node_id)
            await self.node.control.call(
                address,
                "POST",
                "/internal/files/prepare",
                PrepareStage(model, layers, num_layers),
                reply=PreparedStage,
                timeout=PREPARE_TIMEOUT,
                to=node_id,
            )

        await asyncio.gather(*(prepare(r.node_id, r.layers) for r in instance.runners))

    async def prepare_request(self, request: PrepareStage) -> PreparedStage:
        """A peer's coordinator asks this node to fetch one stage's files."""
        stage = StageSpec(request.layers, request.num_layers)
        return PreparedStage(str(await self.ensure_stage(request.model, stage)))

    # --- serving this node's cache to peers -------------------------------------------------------

    def held_manifest(self, repo_id: str, revision: str) -> RepoManifest | None:
        """The files this node holds of a repo at a revision, each with its hash."""
        if not is_repo_id(repo_id) or not is_revision(revision):
            return None
        cache = RepoCache(repo_id)
        commit = cache.commit_for(revision)
        if commit is None:
            return None
        held = cache.present(commit)
        return RepoManifest(repo_id, commit, tuple(f for f in held.files if f.etag is not None))

    def held_file(self, repo_id: str, commit: str, name: str) -> Path | None:
        """The blob behind a snapshot file, if this node holds it; nothing outside the cache."""
        if not is_repo_id(repo_id) or not COMMIT_HASH.fullmatch(commit):
            return None
        manifest = self.held_manifest(repo_id, commit)
        if manifest is None or manifest.file(name) is None:
            return None
        cache = RepoCache(repo_id)
        path = (cache.snapshot(commit) / name).resolve()
        blobs = (cache.folder / "blobs").resolve()
        return path if path.is_file() and path.parent == blobs else None
