"""A stand-in for the Hugging Face Hub on loopback: serves local directories as model repos.

It speaks the part of the Hub's protocol that `huggingface_hub` (and Tandem) use:

- `GET /api/models/{repo}[/revision/{rev}]?blobs=true`: model info, the commit (`sha`), and
  `siblings` with each file's size, Git blob id and, for LFS files, `lfs.sha256`;
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: small files directly with `ETag` (the Git blob hash);
  LFS files (`*.safetensors`) as a 302 to `/cdn/{sha256}` on another origin (a second port) with
  `X-Linked-Etag`/`X-Linked-Size`, the way the Hub sends them to its CDN; `X-Repo-Commit` on both;
- `GET /cdn/{sha256}`: the bytes, with `Range` support (206 and `Content-Range`);
- errors with the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).

Knobs for tests: `rate` (bytes per second for file bodies), `corrupt` (file names served with one
byte flipped), `advertised_sizes` (sizes the model info claims instead of the real ones),
`honor_ranges` (False: answer Range requests with the whole file, as some proxies do), `gated`
repos (need `Authorization: Bearer {token}`), and a log of requests.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHUNK = 8192


@dataclass(frozen=True)
class StandInFile:
    name: str
    path: Path
    size: int
    lfs: bool
    sha256: str
    git_sha1: str  # of the content for small files, of the LFS pointer for LFS files

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def describe(name: str, path: Path) -> StandInFile:
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    lfs = name.endswith(".safetensors")
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    blob_id = git_blob_sha1(pointer.encode() if lfs else data)
    return StandInFile(name, path, len(data), lfs, sha256, blob_id)


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    range: str | None


class HubStandIn:
    def __init__(self, repos: dict[str, Path], gated: tuple[str, ...] = (), token: str = "hf_test_token"):
        self.repos: dict[str, dict[str, StandInFile]] = {}
        self.commits: dict[str, str] = {}
        for repo_id, directory in repos.items():
            self.add_repo(repo_id, directory)
        self.gated = set(gated)
        self.token = token
        self.rate: float | None = None
        self.corrupt: set[str] = set()
        self.advertised_sizes: dict[str, int] = {}
        self.honor_ranges = True
        self.log: list[Logged] = []
        self._servers: list[ThreadingHTTPServer] = []  # the Hub's origin, then the CDN's

    def add_repo(self, repo_id: str, directory: Path) -> None:
        files = {
            p.relative_to(directory).as_posix(): p
            for p in sorted(directory.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }
        self.repos[repo_id] = {name: describe(name, path) for name, path in files.items()}
        listing = "".join(f"{f.name}:{f.etag}\n" for f in self.repos[repo_id].values())
        self.commits[repo_id] = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> HubStandIn:
        handler = type("Handler", (_Handler,), {"hub": self})
        for _ in range(2):
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def fetched(self) -> list[str]:
        """Names of the files whose bytes were requested (resolve GETs and CDN GETs)."""
        names = []
        for entry in self.log:
            if entry.method != "GET":
                continue
            if "/resolve/" in entry.path:
                name = entry.path.split("/resolve/", 1)[1].split("/", 1)[1]
                if not name.endswith(".safetensors"):  # those are redirected to the CDN
                    names.append(name)
            elif entry.path.startswith("/cdn/"):
                sha = entry.path.rsplit("/", 1)[1]
                names += [f.name for files in self.repos.values() for f in files.values() if f.sha256 == sha]
        return names


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.log.append(Logged(self.command, path, self.headers.get("Range")))
        try:
            if path.startswith("/api/models/"):
                self._model_info(path.removeprefix("/api/models/"))
            elif path.startswith("/cdn/"):
                self._cdn(path.removeprefix("/cdn/"), body)
            elif "/resolve/" in path:
                self._resolve(path.lstrip("/"), body)
            else:
                self._error(404, "NotFound", "no such route")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (tests kill downloads on purpose)

    def _repo(self, repo_id: str) -> dict[str, StandInFile] | None:
        files = self.hub.repos.get(repo_id)
        if files is None:
            self._error(401, "RepoNotFound", "Repository not found")
        return files

    def _model_info(self, rest: str) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        files = self._repo(repo_id)
        if files is None:
            return
        commit = self.hub.commits[repo_id]
        if revision not in ("", "main", commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        sizes = {f.name: self.hub.advertised_sizes.get(f.name, f.size) for f in files.values()}
        siblings = [
            {"rfilename": f.name, "size": sizes[f.name], "blobId": f.git_sha1}
            | ({"lfs": {"sha256": f.sha256, "size": sizes[f.name], "pointerSize": 134}} if f.lfs else {})
            for f in files.values()
        ]
        info = {
            "_id": commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit,
            "private": False,
            "gated": "manual" if repo_id in self.hub.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
            "siblings": siblings,
        }
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    def _resolve(self, rest: str, body: bool) -> None:
        repo_part, _, tail = rest.partition("/resolve/")
        revision, _, name = tail.partition("/")
        files = self._repo(repo_part)
        if files is None:
            return
        commit = self.hub.commits[repo_part]
        if revision not in ("main", commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if repo_part in self.hub.gated and self.headers.get("Authorization") != f"Bearer {self.hub.token}":
            return self._error(
                401, "GatedRepo", f"Access to model {repo_part} is restricted. You must be authenticated."
            )
        file = files.get(name)
        if file is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist", {"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "ETag": f'"{file.git_sha1}"', "Accept-Ranges": "bytes"}
        if file.lfs:
            headers |= {
                "Location": f"{self.hub.cdn_url}/cdn/{file.sha256}",
                "X-Linked-Etag": f'"{file.sha256}"',
                "X-Linked-Size": str(file.size),
            }
            return self._send(302, b"", headers)
        self._file(file, headers, body)

    def _cdn(self, sha256: str, body: bool) -> None:
        file = next(
            (f for files in self.hub.repos.values() for f in files.values() if f.sha256 == sha256), None
        )
        if file is None:
            return self._error(404, "NotFound", "no such object")
        self._file(file, {"ETag": f'"{file.sha256}"', "Accept-Ranges": "bytes"}, body)

    def _file(self, file: StandInFile, headers: dict[str, str], body: bool) -> None:
        data = file.path.read_bytes()
        if file.name in self.hub.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start, status = 0, 200
        requested = self.headers.get("Range")
        if requested and requested.startswith("bytes=") and self.hub.honor_ranges:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(status, data[start:] if body else b"", headers, length=len(data) - start)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        extra = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self._send(status, payload, {**extra, **(headers or {})})

    def _send(self, status: int, payload: bytes, headers: dict[str, str], length: int | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload) if length is None else length))
        self.end_headers()
        if self.command == "HEAD":
            return
        rate = self.hub.rate
        for offset in range(0, len(payload), CHUNK):
            self.wfile.write(payload[offset : offset + CHUNK])
            if rate:
                self.wfile.flush()
                time.sleep(CHUNK / rate)
