"""Where a model named on the command line or in a request lives on this machine, without
fetching anything: the bundled demo, a directory (used in place), or a repo's snapshot in the
Hugging Face cache. `tandem.store.fetch` fetches what is not here yet."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tandem.errors import TandemError
from tandem.store.cache import RepoCache, cached_repo_ids
from tandem.store.names import DEFAULT_REVISION, DEMO_MODEL_DIR, DEMO_MODEL_NAME, local_path, parse_model_name
from tandem.store.selection import stage_weight_files

__all__ = ["DEMO_MODEL_DIR", "DEMO_MODEL_NAME", "downloaded_repo_ids", "local_status", "resolve_model_dir"]


def resolve_model_dir(name: str, relative_paths: bool = True) -> Path:
    """`demo`, a checkpoint directory, or a catalog/repo id whose files are in the local cache
    (`relative_paths`: see `parse_model_name`)."""
    parsed = parse_model_name(name, relative_paths)
    if parsed.kind == "demo":
        return DEMO_MODEL_DIR
    if parsed.kind == "directory":
        assert parsed.path is not None
        if not local_path(name)[1]:
            raise TandemError(
                f"model {name!r} not found: give a checkpoint directory, a catalog id, a Hugging Face "
                "repo id, or 'demo'"
            )
        if not parsed.path.is_dir():
            raise TandemError(f"model {name!r} is a file; give the checkpoint directory that holds it")
        return parsed.path
    assert parsed.repo_id is not None
    cache = RepoCache(parsed.repo_id)
    commit = cache.commit_for(parsed.revision)
    if commit is None or not (cache.snapshot(commit) / "config.json").is_file():
        raise TandemError(f"{name} is not downloaded to this machine: run `tandem download {name}`")
    return cache.snapshot(commit)


def local_status(repo_id: str, revision: str = DEFAULT_REVISION) -> Literal["complete", "partial", "absent"]:
    """How much of a repo the local cache holds: every weight file, some files, or nothing."""
    cache = RepoCache(repo_id)
    commit = cache.commit_for(revision)
    if commit is None:
        return "absent"
    present = cache.present(commit).names()
    if "config.json" not in present:
        return "partial" if present else "absent"
    try:
        wanted = stage_weight_files(cache.snapshot(commit), None, present)
    except TandemError:
        return "partial"
    return "complete" if wanted and wanted <= present else "partial"


def downloaded_repo_ids() -> list[str]:
    """The repos whose every weight file (at their default revision) is in the local cache."""
    return [repo_id for repo_id in cached_repo_ids() if local_status(repo_id) == "complete"]
