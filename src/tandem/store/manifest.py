"""A repo's files at one commit (names, sizes, hashes), and which of them a node needs.

The etag of a file is what the Hub says identifies its content: the sha256 for files kept in
Git LFS (weights), the Git blob hash (sha1 over "blob SIZE\\0" + content) for small files. It is
also the file's blob name in the Hugging Face cache, so a file on disk can be checked by name.
Pure Python.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from tandem.errors import TandemError

SHA256 = re.compile(r"^[0-9a-f]{64}$")
GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")

INDEX_FILE = "model.safetensors.index.json"
# Root files a node fetches whatever layers it holds: configs, tokenizer, chat template.
METADATA_SUFFIXES = (".json", ".jinja", ".model", ".tiktoken", ".txt")
# Mistral repos carry their own format beside the Hugging Face one; it is not ours to read.
FOREIGN_WEIGHT_PREFIXES = ("consolidated",)


@dataclass(frozen=True)
class RepoFile:
    name: str  # path within the repo
    size: int
    etag: str | None  # sha256 or Git blob sha1; None only for files on disk whose hash is unknown

    def hasher(self) -> ContentHash | None:
        """A fresh hash of this file's content, of the kind its etag is; None if it has none."""
        if self.etag is None:
            return None
        if SHA256.fullmatch(self.etag):
            return ContentHash(hashlib.sha256(), "sha256")
        if GIT_SHA1.fullmatch(self.etag):
            sha1 = hashlib.sha1(f"blob {self.size}\0".encode())  # Git's blob hash
            return ContentHash(sha1, "git-sha1")
        return None

    def __post_init__(self) -> None:
        if self.etag is not None and not (SHA256.fullmatch(self.etag) or GIT_SHA1.fullmatch(self.etag)):
            raise TandemError(f"file {self.name!r} has a malformed hash {self.etag[:80]!r}")


@dataclass
class ContentHash:
    """An incremental hash and the name of its kind, for messages."""

    digest: Any
    kind: str

    def update(self, data: bytes) -> None:
        self.digest.update(data)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


@dataclass(frozen=True)
class RepoManifest:
    """The files of `repo_id` at `commit` that one source knows of (the Hub: all of them)."""

    repo_id: str
    commit: str
    files: tuple[RepoFile, ...]

    def file(self, name: str) -> RepoFile | None:
        return next((f for f in self.files if f.name == name), None)

    def names(self) -> set[str]:
        return {f.name for f in self.files}

    def __post_init__(self) -> None:
        if not GIT_SHA1.fullmatch(self.commit):
            raise TandemError(f"malformed commit {self.commit[:80]!r} in a manifest")


def is_metadata_file(name: str) -> bool:
    """Configs, tokenizer files and chat templates at the repo's root."""
    return "/" not in name and name.endswith(METADATA_SUFFIXES)


def is_weight_file(name: str) -> bool:
    """Safetensors files at the repo's root in the Hugging Face layout."""
    return "/" not in name and name.endswith(".safetensors") and not name.startswith(FOREIGN_WEIGHT_PREFIXES)


def metadata_files(manifest: RepoManifest) -> list[RepoFile]:
    return [f for f in manifest.files if is_metadata_file(f.name)]


def weight_files(manifest: RepoManifest) -> list[RepoFile]:
    return [f for f in manifest.files if is_weight_file(f.name)]
