"""Tiny quantized mixture-of-experts checkpoints: a tiny DeepSeek-V3 / Qwen3-MoE / Mixtral of
tests/moe_checkpoints.py, its projections (routed and shared experts, attention, dense MLPs;
never the router) written in an on-disk format by tests/quant_checkpoints.py's encoders, and
the dequantized twin: `transformers` loaded from the same tensors, dequantized, in float32.

Sizes are chosen so every projection's input divides into groups of 32 (`QUANTIZABLE_SIZES`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from checkpoints import TinyCheckpoint
from quant_checkpoints import (
    FORMATS,
    QuantizedCheckpoint,
    encode,
    int4_groups,
    int8_rows,
    quantization_config,
)

# Overrides of the tiny families: every input size a multiple of 32.
QUANTIZABLE_SIZES: dict[str, dict[str, Any]] = {
    "deepseek_v3": dict(
        hidden_size=64,
        intermediate_size=64,
        moe_intermediate_size=32,
        kv_lora_rank=32,
        v_head_dim=8,  # 4 heads × 8 = o_proj's 32 inputs
    ),
    "qwen3_moe": dict(hidden_size=64, head_dim=16, intermediate_size=64, moe_intermediate_size=32),
    "mixtral": dict(hidden_size=64, intermediate_size=32),
}
QLORA = dict(q_lora_rank=32)  # the low-rank query of deepseek-v3-qlora-groups and kimi-k2


def is_projection(name: str, tensor: torch.Tensor) -> bool:
    """A decoder-layer linear projection's weight (not a norm, not the router)."""
    return (
        name.startswith("model.layers.")
        and name.endswith(".weight")
        and tensor.dim() == 2
        and not name.endswith(".gate.weight")
    )


def _copy_tokenizer(source: Path, directory: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (source / name).exists():
            shutil.copy(source / name, directory / name)


def _twin(directory: Path, tensors: dict[str, torch.Tensor], source: TinyCheckpoint):
    """transformers loaded (float32, eager experts) from `tensors` in the Hub's layout, under
    the source model's own transformers config (Kimi-K2 as the DeepSeek-V3 it is)."""
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    save_file({n: t.contiguous() for n, t in tensors.items()}, directory / "model.safetensors")
    source.model.config.save_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, experts_implementation="eager"
    )
    return model.eval()


def _source_tensors(source: TinyCheckpoint) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(source.path.glob("*.safetensors")):
        tensors |= load_file(str(path))
    return tensors


def quantize_moe_checkpoint(
    source: TinyCheckpoint, directory: Path, format_name: str, experts_only: bool = False
) -> QuantizedCheckpoint:
    """`source` (a tiny mixture) stored in `format_name` (one of FORMATS), and its twin; with
    `experts_only` only the routed experts are quantized (as Kimi-K2-Thinking ships)."""
    spec = FORMATS[format_name]
    stored, meaning = {}, {}
    for seed, (name, tensor) in enumerate(sorted(_source_tensors(source).items())):
        routed = ".experts." in name and ".shared_experts." not in name
        if not is_projection(name, tensor) or (experts_only and not routed):
            stored[name] = meaning[name] = tensor
            continue
        module = name.removesuffix(".weight")
        encoded, weight = encode(tensor.float(), spec, seed)
        stored |= {f"{module}.{suffix}": part for suffix, part in encoded.items()}
        meaning[name] = weight
    directory.mkdir(parents=True, exist_ok=True)
    save_file({n: t.contiguous() for n, t in stored.items()}, directory / "model.safetensors")
    config = {**source.config, "quantization_config": quantization_config(spec)}
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    _copy_tokenizer(source.path, directory)
    twin = _twin(directory.with_name(directory.name + "-twin"), meaning, source)
    return QuantizedCheckpoint(format_name, directory, twin, config)


def load_time_moe_twin(source: TinyCheckpoint, directory: Path, mode: str):
    """The reference of `--quantize mode` on a mixture: every projection quantized and
    dequantized by the test (int8 rows, or int4 groups), the embedding and head in int8 rows."""
    projection = int8_rows if mode == "int8" else int4_groups
    meaning = {}
    for name, tensor in _source_tensors(source).items():
        if is_projection(name, tensor):
            meaning[name] = projection(tensor.float())
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            meaning[name] = int8_rows(tensor.float())
        else:
            meaning[name] = tensor
    return _twin(directory, meaning, source)
