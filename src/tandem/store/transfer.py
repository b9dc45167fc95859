"""Fetching one file into the cache: resumable, hash-checked, from the first source that works.

A file is written to `blobs/ETAG.incomplete` and renamed to `blobs/ETAG` only once its size and
hash match the manifest, so the cache never holds a bad blob. If the process dies, the next
fetch continues from the incomplete file's length with an HTTP Range request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from huggingface_hub.utils import WeakFileLock

from tandem.errors import TandemError
from tandem.store.cache import RepoCache
from tandem.store.manifest import RepoFile

log = logging.getLogger("tandem.store")

CHUNK_BYTES = 1 << 20
RETRIES = 5  # broken connections retried (resuming) per source before trying the next one


class SourceError(TandemError):
    """One source could not deliver a file; the next source may."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None, retry: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code  # the Hub's X-Error-Code, when it sent one
        self.retry = retry  # a broken connection: resuming from the same source may work


class CorruptFile(TandemError):
    """A file whose bytes do not match its hash."""


@dataclass
class ByteStream:
    """A response body for a file; `offset` is where in the file its first byte belongs."""

    offset: int
    response: httpx.Response

    def chunks(self) -> Iterator[bytes]:
        try:
            yield from self.response.iter_bytes()  # as it arrives: a kill loses little
        except httpx.HTTPError as error:
            raise SourceError(f"the transfer broke ({type(error).__name__})", retry=True) from None


class FileSource(Protocol):
    label: str  # "hub", "peer NODE_ID": where a file came from, for people

    def open(
        self, repo_id: str, commit: str, file: RepoFile, offset: int
    ) -> contextlib.AbstractContextManager[ByteStream]: ...


class Progress(Protocol):
    def advance(self, count: int) -> None: ...
    def fetching(self, file_name: str, source: str) -> None: ...


@contextlib.contextmanager
def open_http_stream(
    client: httpx.Client, url: str, headers: dict[str, str], offset: int
) -> Iterator[ByteStream]:
    """GET `url` from byte `offset` on; errors become SourceError with the status and Hub code."""
    headers = {**headers, "Accept-Encoding": "identity"}  # sizes and offsets are of the raw bytes
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code >= 400:
                code = response.headers.get("X-Error-Code")
                message = response.headers.get("X-Error-Message") or f"HTTP {response.status_code}"
                raise SourceError(
                    message, status=response.status_code, code=code, retry=response.status_code >= 500
                )
            start = 0
            if response.status_code == 206:
                content_range = response.headers.get("Content-Range", "")
                start = int(content_range.removeprefix("bytes ").split("-")[0] or 0)
            yield ByteStream(start, response)
    except httpx.HTTPError as error:
        raise SourceError(
            f"cannot reach {httpx.URL(url).host} ({type(error).__name__})", retry=True
        ) from None


def fetch_file(
    cache: RepoCache, commit: str, file: RepoFile, sources: list[FileSource], progress: Progress
) -> str:
    """Make `file` present in the snapshot of `commit`; returns the label of the source used
    ("cache" if another process or an earlier run already finished it)."""
    assert file.etag is not None, "only files with a known hash are fetched"
    lock = cache.lock(file.etag)
    lock.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    with WeakFileLock(lock):
        blob = cache.blob(file.etag)
        if blob.is_file() and blob.stat().st_size == file.size:
            cache.link(commit, file)
            return "cache"
        for source in sources:
            progress.fetching(file.name, source.label)
            held_before = cache.partial_bytes(file)
            counted = _CountingProgress(progress)
            try:
                _download(cache, commit, file, source, counted)
            except (SourceError, CorruptFile) as error:
                log.info("%s from %s: %s", file.name, source.label, error)
                failures.append((source.label, str(error)))
                # Count only what is still on disk for the next source to continue from.
                progress.advance(cache.partial_bytes(file) - held_before - counted.total)
                continue
            cache.link(commit, file)
            return source.label
    what = f"could not fetch {file.name} of {cache.repo_id}"
    if len(failures) == 1:
        raise TandemError(f"{what} from {failures[0][0]}: {failures[0][1]}")
    raise TandemError(f"{what}: " + "; ".join(f"from {label}: {why}" for label, why in failures))


class _CountingProgress:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.total = 0

    def advance(self, count: int) -> None:
        self.total += count
        self.progress.advance(count)

    def fetching(self, file_name: str, source: str) -> None:
        self.progress.fetching(file_name, source)


def _download(cache: RepoCache, commit: str, file: RepoFile, source: FileSource, progress: Progress) -> None:
    assert file.etag is not None
    partial = cache.incomplete(file.etag)
    partial.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        offset = _resume_point(partial, file)
        if offset == file.size:
            break
        try:
            with source.open(cache.repo_id, commit, file, offset) as stream:
                if stream.offset > offset:
                    raise SourceError(f"asked for bytes from {offset}, it sent from {stream.offset}")
                skip = offset - stream.offset  # a server that ignores ranges sends what we hold again
                with partial.open("ab") as handle:
                    for chunk in stream.chunks():
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                        remaining = file.size - handle.tell()
                        handle.write(chunk[:remaining])
                        progress.advance(min(len(chunk), remaining))
                        if len(chunk) > remaining:
                            break
            if partial.stat().st_size < file.size:
                raise SourceError("the transfer ended early", retry=True)
        except SourceError as error:
            failures += 1
            if not error.retry or failures > RETRIES:
                raise
            time.sleep(min(2.0, 0.25 * failures))
    _verify(partial, file)
    os.chmod(partial, 0o644)
    os.replace(partial, cache.blob(file.etag))


def _resume_point(partial: Path, file: RepoFile) -> int:
    try:
        size = partial.stat().st_size
    except FileNotFoundError:
        partial.touch()
        return 0
    if size > file.size:  # not this file's bytes: start over
        partial.write_bytes(b"")
        return 0
    return size


def _verify(path: Path, file: RepoFile) -> None:
    """Hash the finished file; a mismatch deletes it (a retry then starts clean)."""
    hasher = file.hasher()
    if hasher is None:
        log.warning("%s has no usable hash; checked by size only", file.name)
        return
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            hasher.update(block)
    actual = hasher.hexdigest()
    expected = file.etag or ""
    if actual != expected:
        path.unlink(missing_ok=True)
        raise CorruptFile(
            f"it failed verification ({hasher.kind} {actual[:16]}… instead of {expected[:16]}…) and was deleted"
        )
