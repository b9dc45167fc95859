"""What a model name means: the bundled demo, a directory, a catalog id, or a Hugging Face repo.

    demo                              the model shipped with Tandem
    /models/llama or ./llama or ~/m   a checkpoint directory, used in place
    qwen2.5-0.5b                      a catalog id (`tandem models`), standing for its repo
    Qwen/Qwen2.5-0.5B-Instruct        a Hugging Face repo id
    Qwen/Qwen2.5-0.5B-Instruct@v1.0   ... at a branch, tag or commit (default: main)

On the command line an existing directory wins over a repo id of the same spelling. A node
reading names from requests passes `relative_paths=False`: only the forms above that look like
paths are directories, so the answer never depends on what exists under the node's working
directory. Pure Python, no network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tandem.errors import TandemError
from tandem.store.catalog import ModelCard, find_card

DEMO_MODEL_NAME = "demo"
DEMO_MODEL_DIR = Path(__file__).parent.parent / "demo_model"
DEFAULT_REVISION = "main"

# The Hub's rule for repo ids: "namespace/name", letters, digits, '-', '_', '.'; no "--" or "..".
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,255}$")
COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")

ModelKind = Literal["demo", "directory", "repo"]


class UnknownModelName(TandemError):
    """A name that is no directory, catalog id or repo id."""


@dataclass(frozen=True)
class ModelName:
    """A parsed model name. Repos carry their id and revision; directories their path."""

    text: str
    kind: ModelKind
    path: Path | None = None
    repo_id: str | None = None
    revision: str = DEFAULT_REVISION
    card: ModelCard | None = None

    @property
    def is_pinned(self) -> bool:
        """Whether the revision is a commit, so every node reads exactly the same files."""
        return COMMIT_HASH.fullmatch(self.revision) is not None

    def pinned(self, commit: str) -> str:
        """This repo's name at `commit` (what the coordinator hands every runner)."""
        return f"{self.repo_id}@{commit}"


def is_repo_id(text: str) -> bool:
    return bool(_REPO_ID.fullmatch(text)) and "--" not in text and ".." not in text


def is_revision(text: str) -> bool:
    """A branch, tag or commit name (safe to use as a path under the cache's refs/)."""
    return bool(_REVISION.fullmatch(text)) and ".." not in text


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..") or "\\" in text


def local_path(text: str) -> tuple[Path, bool]:
    """`text` as a local path, and whether it exists; a name no file system takes (`~nobody`, too
    long, a NUL byte) is a path that does not exist, not an error."""
    try:
        path = Path(text).expanduser()
        return path, path.exists()
    except (RuntimeError, OSError, ValueError):
        return Path(text), False


def parse_model_name(text: str, relative_paths: bool = True) -> ModelName:
    """Classify `text`; raises UnknownModelName with the forms a name may take. `relative_paths`:
    an existing relative directory (`models/llama`) counts as a directory, not a repo id."""
    text = text.strip()
    if text == DEMO_MODEL_NAME:
        return ModelName(text, "demo", path=DEMO_MODEL_DIR)
    if _looks_like_path(text):
        return ModelName(text, "directory", path=local_path(text)[0])
    path, exists = local_path(text) if relative_paths else (Path(text), False)
    if exists:
        return ModelName(text, "directory", path=path)
    base, _, revision = text.partition("@")
    if "@" in text and not is_revision(revision):
        raise UnknownModelName(f"model {text!r}: {revision!r} is not a revision (a branch, tag or commit)")
    revision = revision or DEFAULT_REVISION
    card = find_card(base)
    if card is not None:
        return ModelName(text, "repo", repo_id=card.repo, revision=revision, card=card)
    if is_repo_id(base):
        return ModelName(text, "repo", repo_id=base, revision=revision)
    raise UnknownModelName(
        f"model {text!r} not found: give 'demo', a catalog id (see `tandem models`), "
        "a Hugging Face repo id such as Qwen/Qwen2.5-0.5B-Instruct, or a checkpoint directory"
    )
