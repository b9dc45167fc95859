"""The Hugging Face cache, in its own layout, so Tandem and `huggingface_hub` share downloads.

    $HF_HUB_CACHE/models--ORG--NAME/
        blobs/ETAG                  file contents, named by their hash
        blobs/ETAG.incomplete       a download in progress (Tandem resumes from it)
        snapshots/COMMIT/FILE       links to blobs: a checkpoint directory, used in place
        refs/REVISION               the commit a branch or tag pointed at when last fetched
    $HF_HUB_CACHE/.locks/models--ORG--NAME/ETAG.lock   taken while a blob is written

`huggingface_hub` reads files Tandem fetched and the other way round; nothing is ever copied.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from huggingface_hub import constants

from tandem.errors import TandemError
from tandem.sizes import format_bytes
from tandem.store.manifest import GIT_SHA1, SHA256, RepoFile, RepoManifest
from tandem.store.names import COMMIT_HASH


def hub_cache_dir() -> Path:
    """Where `huggingface_hub` keeps repos: HF_HUB_CACHE, else $HF_HOME/hub."""
    return Path(constants.HF_HUB_CACHE).expanduser()


class RepoCache:
    """One repo's folder in the cache."""

    def __init__(self, repo_id: str, root: Path | None = None) -> None:
        self.repo_id = repo_id
        self.root = root or hub_cache_dir()
        self.folder_name = "models--" + repo_id.replace("/", "--")
        self.folder = self.root / self.folder_name

    def blob(self, etag: str) -> Path:
        return self.folder / "blobs" / etag

    def incomplete(self, etag: str) -> Path:
        """A stable name (not one per process), so a download killed halfway resumes from it."""
        return self.folder / "blobs" / f"{etag}.incomplete"

    def lock(self, etag: str) -> Path:
        return self.root / ".locks" / self.folder_name / f"{etag}.lock"

    def snapshot(self, commit: str) -> Path:
        return self.folder / "snapshots" / commit

    def commit_for(self, revision: str) -> str | None:
        """The commit `revision` names here: itself when it is a commit with a snapshot, else the
        commit its ref file recorded; None when this cache has never fetched it."""
        if COMMIT_HASH.fullmatch(revision):
            return revision if self.snapshot(revision).is_dir() else None
        ref = self.folder / "refs" / revision
        try:
            commit = ref.read_text().strip()
        except OSError:
            return None
        return commit if COMMIT_HASH.fullmatch(commit) and self.snapshot(commit).is_dir() else None

    def set_ref(self, revision: str, commit: str) -> None:
        if revision == commit:
            return
        ref = self.folder / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)

    def has(self, commit: str, file: RepoFile) -> bool:
        """Whether the snapshot holds `file` with its size (and, when linked to a blob, its hash)."""
        path = self.snapshot(commit) / file.name
        try:
            if path.stat().st_size != file.size:
                return False
        except OSError:
            return False
        return not (path.is_symlink() and file.etag and Path(os.readlink(path)).name != file.etag)

    def present(self, commit: str) -> RepoManifest:
        """The files the snapshot holds; a file linked to a blob has its etag from the blob's name."""
        snapshot = self.snapshot(commit)
        files = []
        for path in sorted(snapshot.rglob("*")) if snapshot.is_dir() else []:
            if not path.is_file():
                continue
            name = path.relative_to(snapshot).as_posix()
            blob_name = Path(os.readlink(path)).name if path.is_symlink() else ""
            etag = blob_name if SHA256.fullmatch(blob_name) or GIT_SHA1.fullmatch(blob_name) else None
            files.append(RepoFile(name, path.stat().st_size, etag))
        return RepoManifest(self.repo_id, commit, tuple(files))

    def link(self, commit: str, file: RepoFile) -> None:
        """Point the snapshot's entry for `file` at its blob (a relative link, as the Hub client makes)."""
        assert file.etag is not None
        pointer = self.snapshot(commit) / file.name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(self.blob(file.etag), pointer.parent)
        temporary = pointer.with_name(f".{pointer.name}.link")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        temporary.replace(pointer)

    def partial_bytes(self, file: RepoFile) -> int:
        """Bytes of `file` an interrupted download already holds."""
        if file.etag is None:
            return 0
        try:
            return min(self.incomplete(file.etag).stat().st_size, file.size)
        except OSError:
            return 0


def cached_repo_ids(root: Path | None = None) -> list[str]:
    """Every repo the cache has a folder for (complete or not), as `ORG/NAME`."""
    root = root or hub_cache_dir()
    if not root.is_dir():
        return []
    return sorted(
        folder.name.removeprefix("models--").replace("--", "/", 1)
        for folder in root.iterdir()
        if folder.is_dir() and folder.name.startswith("models--") and folder.name.count("--") == 2
    )


def remove_repo(repo_id: str, root: Path | None = None) -> int:
    """Delete a repo's folder (every snapshot and blob) and its locks; returns the bytes freed."""
    cache = RepoCache(repo_id, root)
    if not cache.folder.is_dir():
        return 0
    freed = sum(path.stat().st_size for path in (cache.folder / "blobs").glob("*") if path.is_file())
    shutil.rmtree(cache.folder)
    shutil.rmtree(cache.root / ".locks" / cache.folder_name, ignore_errors=True)
    return freed


def check_disk_space(needed: int, directory: Path, what: str) -> None:
    """Refuse to start a download that cannot fit, before a byte is written."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise TandemError(
            f"not enough disk space for {what}: it needs {format_bytes(needed)} in {directory}, "
            f"which has {format_bytes(free)} free; free some space or set HF_HOME to a larger disk"
        )
