"""Tiny quantized checkpoints, written by the test itself in each on-disk format, with their
dequantized float32 twins as `transformers` models (the reference the engine must match).

The packing here is written from each format's description, independently of the engine's
readers (`tandem.engine.quant.readers`): a reader that unpacks a format wrongly decodes
differently from the twin. Every scale is rounded to its stored dtype before the values are
quantized with it, so the twin's weights are exactly what the stored tensors mean.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from checkpoints import TinyCheckpoint, build_checkpoint

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_LINEARS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a word holds output 8j + AWQ_PACK_ORDER[i]


@dataclass
class QuantizedCheckpoint:
    name: str
    path: Path
    model: Any  # transformers, float32: the dequantized twin
    config: dict[str, Any]


# --- packing, from the formats' descriptions ---------------------------------------------------


def pack_along_last(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned values [..., n] → int32 [..., n / (32 / bits)], consecutive values from the low bits up."""
    per_word = 32 // bits
    words = torch.zeros(*values.shape[:-1], values.shape[-1] // per_word, dtype=torch.int64)
    for i in range(per_word):
        words |= values[..., i::per_word].to(torch.int64) << (bits * i)
    return _as_int32(words)


def _as_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def groups_of(g_idx: torch.Tensor, count: int) -> list[torch.Tensor]:
    return [torch.nonzero(g_idx == g).flatten() for g in range(count)]


def group_index(inputs: int, group: int, permuted: bool, seed: int) -> torch.Tensor:
    """Each input's group: in order, or (act-order) over a random permutation of the inputs."""
    if not permuted:
        return torch.arange(inputs) // group
    order = torch.randperm(inputs, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(inputs, dtype=torch.long)
    g_idx[order] = torch.arange(inputs) // group
    return g_idx


def asymmetric(w: torch.Tensor, levels: int, scale_dtype: torch.dtype, low_zero: int = 0):
    """(scale, zero) of a range [min, max] over `levels` steps; scale rounded to scale_dtype."""
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / levels).clamp_min(1e-6).to(scale_dtype).float()
    zero = torch.round(-low / scale).clamp(low_zero, levels)
    return scale, zero


# --- one encoder per format: W [out, in] -> (tensors to store, the weight they mean) ------------


def encode_fp8(
    w: torch.Tensor, block: tuple[int, int] | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out, inputs = w.shape
    rows, cols = block if block is not None else (out, inputs)
    n_rows, n_cols = -(-out // rows), -(-inputs // cols)
    scale = torch.empty(n_rows, n_cols)
    for r in range(n_rows):
        for c in range(n_cols):
            tile = w[r * rows : (r + 1) * rows, c * cols : (c + 1) * cols]
            scale[r, c] = tile.abs().max() / 448
    expanded = scale.repeat_interleave(rows, 0)[:out].repeat_interleave(cols, 1)[:, :inputs]
    stored = (w / expanded).to(torch.float8_e4m3fn)
    meaning = stored.float() * expanded
    scale_tensor = scale if block is not None else scale.reshape(())
    return {"weight": stored, "weight_scale_inv": scale_tensor}, meaning


def encode_compressed_tensors(
    w: torch.Tensor, bits: int, group: int | None, symmetric: bool, act_order: bool, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out, inputs = w.shape
    group = group or inputs
    count = inputs // group
    g_idx = group_index(inputs, group, act_order, seed)
    low_q, high_q = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.empty(out, inputs)
    scales = torch.empty(out, count)
    zero_points = torch.zeros(out, count)
    meaning = torch.empty_like(w)
    for g, columns in enumerate(groups_of(g_idx, count)):
        part = w[:, columns]
        if symmetric:
            scale = (part.abs().amax(dim=-1) / high_q).clamp_min(1e-6).to(torch.bfloat16).float()
            zero = torch.zeros(out)
        else:
            scale, unsigned_zero = asymmetric(part, 2**bits - 1, torch.bfloat16)
            zero = unsigned_zero + low_q  # signed zero point
        values = (torch.round(part / scale[:, None]) + zero[:, None]).clamp(low_q, high_q)
        q[:, columns], scales[:, g], zero_points[:, g] = values, scale, zero
        meaning[:, columns] = (values - zero[:, None]) * scale[:, None]
    offset = 2 ** (bits - 1)
    tensors = {
        "weight_packed": pack_along_last((q + offset).to(torch.int64), bits),
        "weight_scale": scales.to(torch.bfloat16),
        "weight_shape": torch.tensor([out, inputs], dtype=torch.int64),
    }
    if not symmetric:
        tensors["weight_zero_point"] = pack_along_last(
            (zero_points + offset).to(torch.int64).T, bits
        ).T.contiguous()
    if act_order:
        tensors["weight_g_idx"] = g_idx.to(torch.int32)
    return tensors, meaning


def encode_awq(w: torch.Tensor, group: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out, inputs = w.shape
    wt = w.T  # AWQ stores [in, out]
    count = inputs // group
    q, zeros, scales = torch.empty(inputs, out), torch.empty(count, out), torch.empty(count, out)
    for g in range(count):
        part = wt[g * group : (g + 1) * group].T  # [out, group]
        scale, zero = asymmetric(part, 15, torch.float16)
        q[g * group : (g + 1) * group] = (torch.round(part / scale[:, None]) + zero[:, None]).clamp(0, 15).T
        zeros[g], scales[g] = zero, scale
    meaning = ((q - zeros.repeat_interleave(group, 0)) * scales.repeat_interleave(group, 0)).T

    def pack(values: torch.Tensor) -> torch.Tensor:  # [rows, out] -> [rows, out / 8]
        words = torch.zeros(values.shape[0], out // 8, dtype=torch.int64)
        for i, column in enumerate(AWQ_PACK_ORDER):
            words |= values[:, column::8].to(torch.int64) << (4 * i)
        return _as_int32(words)

    return {
        "qweight": pack(q),
        "qzeros": pack(zeros),
        "scales": scales.to(torch.float16),
    }, meaning.contiguous()


def encode_gptq(
    w: torch.Tensor, bits: int, group: int | None, symmetric: bool, act_order: bool, v1: bool, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out, inputs = w.shape
    group = group or inputs
    count = inputs // group
    maxq = 2**bits - 1
    g_idx = group_index(inputs, group, act_order, seed)
    q = torch.empty(out, inputs)
    scales, zeros = torch.empty(count, out), torch.empty(count, out)
    meaning = torch.empty_like(w)
    for g, columns in enumerate(groups_of(g_idx, count)):
        part = w[:, columns]
        if symmetric:
            scale = (part.abs().amax(dim=-1) * 2 / maxq).clamp_min(1e-6).to(torch.float16).float()
            zero = torch.full((out,), float((maxq + 1) // 2))
        else:  # v1 stores zero - 1, so a zero of 0 cannot be written: keep zeros from 1
            scale, zero = asymmetric(part, maxq, torch.float16, low_zero=1 if v1 else 0)
        values = (torch.round(part / scale[:, None]) + zero[:, None]).clamp(0, maxq)
        q[:, columns] = values
        scales[g], zeros[g] = scale, zero
        meaning[:, columns] = (values - zero[:, None]) * scale[:, None]
    stored_zeros = zeros - 1 if v1 else zeros
    tensors = {
        "qweight": pack_along_last(q.to(torch.int64), bits).T.contiguous(),  # [in / per word, out]
        "qzeros": pack_along_last(stored_zeros.to(torch.int64), bits),
        "scales": scales.to(torch.float16),
        "g_idx": g_idx.to(torch.int32),
    }
    return tensors, meaning


# --- whole checkpoints -------------------------------------------------------------------------


FORMATS: dict[str, dict[str, Any]] = {
    "fp8-blocks": dict(method="fp8", block=(32, 32)),
    "fp8-ragged-blocks": dict(method="fp8", block=(48, 32)),
    "fp8-per-tensor": dict(method="fp8", block=None),
    "ct-int4-group-sym": dict(method="compressed-tensors", bits=4, group=32, symmetric=True),
    "ct-int4-group-asym-actorder": dict(
        method="compressed-tensors", bits=4, group=32, symmetric=False, act_order=True
    ),
    "ct-int8-channel-sym": dict(method="compressed-tensors", bits=8, group=None, symmetric=True),
    "ct-int8-group-asym": dict(method="compressed-tensors", bits=8, group=32, symmetric=False),
    "awq-int4": dict(method="awq", group=32),
    "gptq-int4-sym-v1": dict(method="gptq", bits=4, group=32, symmetric=True, v1=True),
    "gptq-int4-asym-desc-act": dict(
        method="gptq", bits=4, group=32, symmetric=False, act_order=True, v1=True
    ),
    "gptq-int8-channel-v2": dict(method="gptq", bits=8, group=None, symmetric=False, v1=False),
    "gptq-int4-head": dict(method="gptq", bits=4, group=32, symmetric=True, v1=True, head=True),
}


def quantization_config(spec: dict[str, Any]) -> dict[str, Any]:
    method = spec["method"]
    if method == "fp8":
        config: dict[str, Any] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
        if spec["block"] is not None:
            config["weight_block_size"] = list(spec["block"])
        return config
    if method == "compressed-tensors":
        weights = {
            "num_bits": spec["bits"],
            "type": "int",
            "symmetric": spec["symmetric"],
            "strategy": "group" if spec["group"] else "channel",
            "group_size": spec["group"],
            "dynamic": False,
            "actorder": "group" if spec.get("act_order") else None,
        }
        return {
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "quantization_status": "compressed",
            "config_groups": {
                "group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None}
            },
            "ignore": ["lm_head"],
        }
    if method == "awq":
        return {
            "quant_method": "awq",
            "bits": 4,
            "group_size": spec["group"],
            "zero_point": True,
            "version": "gemm",
        }
    return {
        "quant_method": "gptq",
        "bits": spec["bits"],
        "group_size": spec["group"] or -1,
        "desc_act": bool(spec.get("act_order")),
        "sym": spec["symmetric"],
        "checkpoint_format": "gptq" if spec["v1"] else "gptq_v2",
        "lm_head": bool(spec.get("head")),
    }


def encode(w: torch.Tensor, spec: dict[str, Any], seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    method = spec["method"]
    if method == "fp8":
        return encode_fp8(w, spec["block"])
    if method == "compressed-tensors":
        return encode_compressed_tensors(
            w, spec["bits"], spec["group"], spec["symmetric"], bool(spec.get("act_order")), seed
        )
    if method == "awq":
        return encode_awq(w, spec["group"])
    return encode_gptq(
        w, spec["bits"], spec["group"], spec["symmetric"], bool(spec.get("act_order")), spec["v1"], seed
    )


def quantize_checkpoint(source: TinyCheckpoint, directory: Path, format_name: str) -> QuantizedCheckpoint:
    """`source` stored in `format_name` (one of FORMATS) in `directory`, and its dequantized twin."""
    spec = FORMATS[format_name]
    twin = copy.deepcopy(source.model)
    state = {name: tensor.detach().clone() for name, tensor in source.model.state_dict().items()}
    modules = [
        f"model.layers.{layer}.{linear}"
        for layer in range(source.config["num_hidden_layers"])
        for linear in (*LINEARS, *MLP_LINEARS)
    ]
    if spec.get("head"):
        modules.append("lm_head")
    twin_state = twin.state_dict()
    for seed, module in enumerate(modules):
        weight = state.pop(f"{module}.weight")
        tensors, meaning = encode(weight, spec, seed)
        state.update({f"{module}.{suffix}": tensor for suffix, tensor in tensors.items()})
        with torch.no_grad():
            twin_state[f"{module}.weight"].copy_(meaning)
    if source.config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, directory / "model.safetensors")
    config = {**source.config, "quantization_config": quantization_config(spec)}
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source.path / name, directory / name)
    return QuantizedCheckpoint(format_name, directory, twin.eval(), config)


# --- load-time quantization, as documented (tandem.engine.quant.quantize) ---------------------


def int8_rows(w: torch.Tensor) -> torch.Tensor:
    """What `--quantize` makes of the embedding, the head, and every --quantize int8 projection."""
    scale = (w.abs().amax(dim=-1, keepdim=True) / 127).clamp_min(1e-10)
    return torch.round(w / scale).clamp(-127, 127) * scale


def int4_groups(w: torch.Tensor, group: int = 128) -> torch.Tensor:
    """What --quantize int4 makes of a projection: asymmetric groups, ranges widened to 0."""
    inputs = w.shape[-1]
    while inputs % group:
        group //= 2
    parts = w.reshape(w.shape[0], -1, group)
    low, high = parts.amin(-1, keepdim=True).clamp(max=0), parts.amax(-1, keepdim=True).clamp(min=0)
    scale = ((high - low) / 15).clamp_min(1e-10)
    zero = torch.round(-low / scale).clamp(0, 15)
    q = (torch.round(parts / scale) + zero).clamp(0, 15)
    return ((q - zero) * scale).reshape(w.shape)


def load_time_twin(source: TinyCheckpoint, mode: str) -> Any:
    """The reference of `--quantize mode`: the same weights quantized and dequantized by the test."""
    twin = copy.deepcopy(source.model)
    projection = int8_rows if mode == "int8" else int4_groups
    with torch.no_grad():
        for name, module in twin.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            if name.startswith("model.layers."):
                module.weight.copy_(projection(module.weight))
            elif name == "lm_head" and not source.config.get("tie_word_embeddings"):
                module.weight.copy_(int8_rows(module.weight))
        embedding = twin.model.embed_tokens.weight
        embedding.copy_(int8_rows(embedding))  # tied: the head is this same tensor
    return twin.eval()


def build_quantizable(directory: Path, family: str, **overrides: Any) -> TinyCheckpoint:
    """A tiny checkpoint whose projections divide into groups of 32 (intermediate 128)."""
    return build_checkpoint(directory, family, **{"intermediate_size": 128, **overrides})
