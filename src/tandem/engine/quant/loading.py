"""Quantized layers in a stage being loaded: which modules are quantized, putting quantized
modules in their place on the meta device, and filling them from the checkpoint.

`quantize_modules` runs on a model built on the meta device (after any tensor-parallel
rewrite), `load_quantized` after the dense tensors are loaded, and `prepare_quantized` after
`fuse_projections`. Which modules are quantized:
- a checkpoint stored quantized: every decoder-layer linear whose marker tensor is in the
  checkpoint (`readers.MARKERS`), and the head where the format quantizes it; everything else
  (norms, the embedding, excluded modules) stays as stored;
- `--quantize int8|int4`: every decoder-layer linear, and the embedding and head in int8 rows.
The routed experts of a mixture (`models.moe.Experts`) become `QuantizedExperts` by the same
rule, asked of their first held expert's gate projection: each held expert is read (or
quantized) one at a time and the layer's banks stacked from the compact weights.
"""

from __future__ import annotations

import torch
from torch import nn

from tandem.engine.checkpoint import Checkpoint
from tandem.engine.models.moe import Experts
from tandem.engine.parallel.layers import (
    QuantizedRowParallelLinear,
    QuantizedVocabParallelEmbedding,
    QuantizedVocabParallelHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    VocabParallelHead,
)
from tandem.engine.quant.cpu import release_freed_memory
from tandem.engine.quant.experts import QuantizedExperts
from tandem.engine.quant.linear import QuantizedEmbedding, QuantizedLinear
from tandem.engine.quant.quantize import quantize_weight
from tandem.engine.quant.readers import is_quantized_in, read_quantized, stored_shape
from tandem.engine.quant.weight import QuantizedWeight, concatenate, stack
from tandem.errors import ModelFormatError, UnsupportedModelError
from tandem.model.config import ModelConfig
from tandem.model.quantization import QuantFormat, loaded_format

LAYERS_PREFIX = "model.layers."
EMBEDDING, HEAD = "model.embed_tokens", "lm_head"


def stage_format(config: ModelConfig, quantize: str | None) -> QuantFormat | None:
    """The quantization a stage loads with (`tandem.model.quantization.loaded_format`)."""
    return loaded_format(config.quantization, quantize)


def _module_is_quantized(name: str, fmt: QuantFormat, checkpoint: Checkpoint) -> bool:
    if name == HEAD:
        if fmt.head is None:
            return False
        return fmt.is_load_time or is_quantized_in(checkpoint, name, fmt)
    if name == EMBEDDING:
        return fmt.embedding is not None
    if not name.startswith(LAYERS_PREFIX):
        return False
    return fmt.quantizes(name) if fmt.is_load_time else is_quantized_in(checkpoint, name, fmt)


def _first_expert_gate(name: str, experts: Experts) -> str:
    return f"{name}.{experts.first}.{experts.names[0]}"


def _replacement(name: str, module: nn.Module, dtype: torch.dtype) -> nn.Module:
    if isinstance(module, Experts):
        inner, hidden = module.gate_up_proj.shape[1] // 2, module.gate_up_proj.shape[2]
        return QuantizedExperts(
            module.num_experts, module.first, module.count, hidden, inner, module.names, module.round_weights
        )
    if isinstance(module, VocabParallelEmbedding):
        return QuantizedVocabParallelEmbedding(module.vocab, module.weight.shape[1], module.all_reduce, dtype)
    if isinstance(module, VocabParallelHead):
        return QuantizedVocabParallelHead(
            module.weight.shape[1], module.vocab, module.vocab_sizes, module.all_gather
        )
    if type(module) is nn.Linear:
        return QuantizedLinear(module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, RowParallelLinear):
        return QuantizedRowParallelLinear(
            module.in_features,
            module.out_features,
            module.bias is not None,
            module.all_reduce,
            module.sum_in_norm,
        )
    if isinstance(module, nn.Embedding):
        return QuantizedEmbedding(module.num_embeddings, module.embedding_dim, dtype)
    raise UnsupportedModelError(f"{name}: a {type(module).__name__} cannot hold a quantized weight")


_REPLACEABLE = (
    nn.Linear,
    nn.Embedding,
    RowParallelLinear,
    VocabParallelEmbedding,
    VocabParallelHead,
    Experts,
)


def quantize_modules(
    model: nn.Module, fmt: QuantFormat, checkpoint: Checkpoint, dtype: torch.dtype
) -> list[str]:
    """Put quantized modules in place of the quantized ones of `fmt` (model on the meta device);
    returns their names. A checkpoint stored quantized must quantize some module of the stage."""
    names = []
    with torch.device("meta"):
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                if not isinstance(child, _REPLACEABLE):
                    continue
                marker = _first_expert_gate(name, child) if isinstance(child, Experts) else name
                if not _module_is_quantized(marker, fmt, checkpoint):
                    continue
                setattr(parent, child_name, _replacement(name, child, dtype))
                names.append(name)
    holds_layers = any(name.startswith(LAYERS_PREFIX) for name, _ in model.named_modules())
    if not fmt.is_load_time and holds_layers and not any(n.startswith(LAYERS_PREFIX) for n in names):
        raise ModelFormatError(
            f"config.json declares {fmt.method} quantization, but no layer of the checkpoint holds "
            f"quantized tensors (looked for {fmt.method}'s tensor names)"
        )
    return names


def _block(weight: QuantizedWeight, name: str, slice_rule) -> QuantizedWeight:
    block = slice_rule(f"{name}.weight") if slice_rule else None
    if block is None:
        return weight
    if block.rows is not None:
        weight = weight.rows(block.rows)
    if block.columns is not None:
        weight = weight.columns(block.columns)
    return weight


def local_shape(module: nn.Module) -> tuple[int, int]:
    """[out, in] of the weight a quantized module holds (a tensor-parallel block's, if split)."""
    if isinstance(module, QuantizedEmbedding):
        return module.num_embeddings, module.embedding_dim
    assert not isinstance(module, QuantizedExperts)
    assert isinstance(module, QuantizedLinear)
    return module.out_features, module.in_features


def _read_weight(
    checkpoint: Checkpoint, name: str, fmt: QuantFormat, dtype: torch.dtype, source: str | None = None
) -> QuantizedWeight:
    """Module `name`'s weight as stored quantized, or quantized now from its 16/32-bit tensor
    (`source`'s, for a tied head)."""
    if not fmt.is_load_time:
        out, inputs = stored_shape(checkpoint, name, fmt)
        return read_quantized(checkpoint, name, fmt, out, inputs)
    scheme = fmt.embedding if name == EMBEDDING else fmt.head if name == HEAD else fmt.layers
    assert scheme is not None
    weight = quantize_weight(checkpoint.read(f"{source or name}.weight"), scheme, dtype)
    # Unmap the 16-bit file after each weight, so its pages do not add up in memory while
    # the quantized copies are made (the next read maps it again).
    getattr(checkpoint, "close", lambda: None)()
    release_freed_memory()
    return weight


def load_experts(
    experts: QuantizedExperts,
    name: str,
    fmt: QuantFormat,
    checkpoint: Checkpoint,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Fill a layer's quantized experts one expert at a time (each moved to `device` as it is
    read, so no 16-bit expert and no whole bank sits in host memory beside the device's)."""
    gate_ups, downs = [], []
    inner, hidden = experts.inner, experts.hidden
    for modules in experts.expert_modules(name):
        parts = [_read_weight(checkpoint, module, fmt, dtype) for module in modules]
        for module, part, shape in zip(
            modules, parts, ((inner, hidden), (inner, hidden), (hidden, inner)), strict=True
        ):
            if part.shape != shape:
                raise ModelFormatError(
                    f"{module} holds a {part.shape[0]}×{part.shape[1]} weight in the checkpoint, "
                    f"but the config implies {shape[0]}×{shape[1]}"
                )
            if part.input_order is not None:
                raise UnsupportedModelError(
                    f"{module}: experts quantized in activation order (GPTQ desc_act, actorder) "
                    "are not supported"
                )
        gate_ups.append(concatenate(parts[:2]).to(device))
        downs.append(parts[2].to(device))
    experts.set_banks(stack(gate_ups).contiguous(), stack(downs).contiguous())


def load_quantized(
    model: nn.Module,
    names: list[str],
    fmt: QuantFormat,
    checkpoint: Checkpoint,
    device: torch.device,
    dtype: torch.dtype,
    config: ModelConfig,
    slice_rule=None,
) -> None:
    """Fill the quantized modules `names` from the checkpoint: each weight is read (or quantized)
    whole, then cut to this rank's block under tensor parallelism, one module at a time."""
    modules = dict(model.named_modules())
    tied = config.tie_word_embeddings and EMBEDDING in names and HEAD in names
    for name in names:
        if tied and name == HEAD:
            continue
        module = modules[name]
        if isinstance(module, QuantizedExperts):
            load_experts(module, name, fmt, checkpoint, device, dtype)
            continue
        source = name
        if name == HEAD and f"{HEAD}.weight" not in checkpoint and config.tie_word_embeddings:
            source = EMBEDDING
        weight = _read_weight(checkpoint, name, fmt, dtype, source)
        block = _block(weight, name, slice_rule)
        if block.shape != local_shape(module):
            detail = f" (a block of {weight.shape})" if block is not weight else ""
            raise ModelFormatError(
                f"{name} holds a {block.shape[0]}×{block.shape[1]} weight{detail} in the checkpoint, "
                f"but the config implies {local_shape(module)[0]}×{local_shape(module)[1]}"
            )
        module.set_weight(block.to(device).contiguous())  # type: ignore[operator]
    if tied:
        embedding, head = modules[EMBEDDING], modules[HEAD]
        assert isinstance(embedding, QuantizedEmbedding) and isinstance(head, QuantizedLinear)
        head.set_weight(embedding.quantized)  # one copy serves the lookup and the head


def prepare_quantized(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Put every quantized layer's weight in the form its device's kernels read (CPUs: torch's
    packed int4 layout where it fits). Runs after `fuse_projections`."""
    if device.type != "cpu":
        return
    for module in model.modules():
        if isinstance(module, QuantizedExperts) or (
            isinstance(module, QuantizedLinear) and not module.cpu_int4
        ):
            module.prepare_for_cpu(dtype)
    release_freed_memory()  # the unfused and unpacked weights just freed
