"""Embeddings from the engine equal transformers' AutoModel hidden states with the same pooling,
for last-token pooling with normalisation (Qwen3-Embedding's) and mean pooling without."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from embedding_checkpoints import build_embedding_checkpoint, reference_embedding
from tandem.engine.embedding import Embedder
from tandem.errors import InvalidRequestError
from tandem.model.pooling import Pooling, read_pooling
from tandem.model.tokenizer import Tokenizer
from tandem.runner.assemble import local_spec, start_rank


def safetensors_names(directory) -> set[str]:
    names = set()
    for path in directory.glob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            names |= set(weights.keys())
    return names


TEXTS = ["The quick brown fox", "jumps over the lazy dog again and again", "a"]


@pytest.mark.parametrize(
    ("family", "mode", "normalize", "bare"),
    [
        ("qwen3-qknorm", "last", True, False),
        ("qwen3-qknorm", "last", True, True),
        ("llama-gqa", "mean", False, False),
    ],
)
def test_embeddings_equal_transformers(tmp_path, family, mode, normalize, bare):
    checkpoint = build_embedding_checkpoint(tmp_path / "model", family, mode, normalize, bare)
    if bare:  # the layout sentence-transformers saves: no `model.` prefix, no head
        names = safetensors_names(checkpoint.path)
        assert "embed_tokens.weight" in names and not any(n.startswith(("model.", "lm_head")) for n in names)
    assert read_pooling(checkpoint.path) == Pooling(mode, normalize)  # type: ignore[arg-type]
    rank = start_rank(local_spec(checkpoint.path, device="cpu", dtype="float32", max_context=64))
    embedder = rank.embedder()
    assert isinstance(embedder, Embedder)
    tokenizer = Tokenizer(checkpoint.path)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        vector = torch.tensor(embedder.embed(ids))
        assert vector.shape == (checkpoint.config["hidden_size"],)
        expected = reference_embedding(checkpoint.path, ids, mode, normalize)
        torch.testing.assert_close(vector, expected, rtol=1e-5, atol=1e-5)
        assert embedder.embed(ids) == vector.tolist()  # deterministic
        if normalize:
            assert abs(float(vector.norm()) - 1.0) < 1e-5
    with pytest.raises(InvalidRequestError, match="context holds 64"):
        embedder.embed([1] * 65)


def test_a_checkpoint_without_pooling_is_not_an_embedding_model(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    assert read_pooling(checkpoint.path) is None
    rank = start_rank(local_spec(checkpoint.path, device="cpu", dtype="float32", max_context=64))
    assert rank.embedder() == (
        "this model is not an embedding model: its checkpoint declares no sentence-transformers "
        "pooling (modules.json)"
    )
