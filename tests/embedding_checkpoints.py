"""Tiny embedding checkpoints: a random tiny checkpoint (tests/checkpoints.py) plus the
sentence-transformers files an embedding repo ships (modules.json, the Pooling module's
config, a Normalize module), as Qwen3-Embedding declares last-token pooling and GTE/E5 mean."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from checkpoints import TinyCheckpoint, build_checkpoint

MODE_KEYS = {
    "last": "pooling_mode_lasttoken",
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
}


def build_embedding_checkpoint(
    directory: Path, family: str, mode: str, normalize: bool, bare: bool = False
) -> TinyCheckpoint:
    """`bare`: the weights saved from the decoder alone (no `model.` prefix, no head), the way
    sentence-transformers saves embedding models; the config then ties the head."""
    checkpoint = build_checkpoint(directory, family, **({"tie_word_embeddings": True} if bare else {}))
    if bare:
        for weights in directory.glob("*.safetensors"):
            weights.unlink()
        checkpoint.model.model.save_pretrained(directory)  # writes the bare decoder's config too
        checkpoint.model.config.save_pretrained(directory)  # the causal LM's config, as those repos ship
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append(
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    )
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (directory / "2_Normalize").mkdir()
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    pooling = {key: False for key in MODE_KEYS.values()}
    pooling[MODE_KEYS[mode]] = True
    pooling["word_embedding_dimension"] = checkpoint.config["hidden_size"]
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return checkpoint


def reference_embedding(directory: Path, token_ids: list[int], mode: str, normalize: bool) -> torch.Tensor:
    """transformers' AutoModel final hidden states, pooled as the files declare: the reference."""
    import transformers

    model = transformers.AutoModel.from_pretrained(directory, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model(torch.tensor([token_ids])).last_hidden_state[0]  # [T, hidden]
    vector = {"last": hidden[-1], "cls": hidden[0], "mean": hidden.mean(dim=0)}[mode]
    return torch.nn.functional.normalize(vector, dim=0) if normalize else vector
