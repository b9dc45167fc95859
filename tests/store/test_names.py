"""Model names: demo, directories, catalog ids and repo ids, and where each is found locally."""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from tandem.errors import TandemError
from tandem.store.names import DEMO_MODEL_DIR, UnknownModelName, parse_model_name
from tandem.store.resolve import local_status, resolve_model_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_each_kind_of_name(tmp_path, monkeypatch):
    assert parse_model_name("demo").path == DEMO_MODEL_DIR
    assert parse_model_name(str(tmp_path)).kind == "directory"
    assert parse_model_name("./nowhere").kind == "directory"  # a path, even before it exists
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert parse_model_name("org/model").kind == "directory"  # an existing directory wins
    assert parse_model_name("org/model", relative_paths=False).kind == "repo"  # a node's requests
    assert parse_model_name("./org/model", relative_paths=False).kind == "directory"

    card = parse_model_name("llama-3.1-8b")
    assert (card.kind, card.repo_id, card.revision) == ("repo", "meta-llama/Llama-3.1-8B-Instruct", "main")
    assert card.card is not None and card.card.id == "llama-3.1-8b"
    repo = parse_model_name("someone/some-model@v1.0")
    assert (repo.repo_id, repo.revision, repo.card, repo.is_pinned) == (
        "someone/some-model",
        "v1.0",
        None,
        False,
    )
    pinned = parse_model_name(f"someone/some-model@{COMMIT}")
    assert pinned.is_pinned and pinned.pinned(COMMIT) == f"someone/some-model@{COMMIT}"


@pytest.mark.parametrize(
    "bad", ["no such model", "a/b/c", "a--b/c", "org/name@", "org/name@../../x", "llama", "x" * 5000, "a\0b"]
)
def test_names_that_are_nothing_say_what_a_name_may_be(bad):
    with pytest.raises(UnknownModelName) as caught:
        parse_model_name(bad)
    assert "\n" not in str(caught.value)
    assert "catalog id" in str(caught.value) or "revision" in str(caught.value)


@pytest.mark.parametrize("path", ["~nobody-at-all/model", "/" + "x" * 5000, "/tmp/a\0b"])
def test_paths_no_file_system_takes_are_not_found(path):
    with pytest.raises(TandemError, match="not found"):
        resolve_model_dir(path)


def test_a_repo_resolves_to_its_cached_snapshot_or_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(TandemError, match="run `tandem download someone/model`"):
        resolve_model_dir("someone/model")
    assert local_status("someone/model") == "absent"

    snapshot = tmp_path / "models--someone--model" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someone--model" / "refs").mkdir()
    (tmp_path / "models--someone--model" / "refs" / "main").write_text(COMMIT)
    assert resolve_model_dir("someone/model") == snapshot
    assert resolve_model_dir(f"someone/model@{COMMIT}") == snapshot
    with pytest.raises(TandemError, match="not downloaded"):
        resolve_model_dir("someone/model@other-branch")
    assert local_status("someone/model") == "partial"  # a config, no weights
    (snapshot / "model.safetensors").write_bytes(b"")
    assert local_status("someone/model") == "complete"
