"""The FLUX.1 transformer's blocks quantized as they load (`quantize: int8|int4`; `fp8` for
benchmarks), in the formats and kernels text models use (`engine/quant/`).

What is quantized: every linear projection inside the double- and single-stream blocks — the
attention's q/k/v and output projections of both streams, the feed-forwards, the single blocks'
MLP input and output projections, and the blocks' modulations (`norm1.linear`, ...), which hold
about a quarter of FLUX.1's weights. What stays in the model's dtype: the input embedders
(`x_embedder`, `context_embedder`), the conditioning (`time_text_embed`), the output layers
(`norm_out`, `proj_out`), every bias and the q/k RMSNorms — under 1% of the weights, and the
parts every step's result leans on most. The text encoders and the VAE are never quantized.

int8 holds one symmetric scale per output row, int4 asymmetric groups of 128 inputs (64 or 32
where 128 does not divide them), exactly as `--quantize` holds a text model's projections
(`engine/quant/quantize.py`); fp8 blocks of 128×128 as DeepSeek-V3 ships them.
"""

from __future__ import annotations

import torch
from torch import nn

from tandem.engine.quant.cpu import release_freed_memory
from tandem.engine.quant.linear import QuantizedLinear
from tandem.engine.quant.quantize import quantize_fp8_blocks, quantize_weight
from tandem.engine.quant.weight import QuantizedWeight
from tandem.model.quantization import load_time_format

BLOCK_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.")
BENCH_QUANTIZE_CHOICES = ("int8", "int4", "fp8")  # fp8: `tandem bench` only


def block_linear_names(model: nn.Module) -> list[str]:
    """The names of the plain linear projections inside the model's blocks (what is quantized)."""
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name.startswith(BLOCK_PREFIXES)
    ]


def hold_quantized(model: nn.Module) -> list[str]:
    """Put an empty `QuantizedLinear` (with its bias) in place of each block projection of a
    model built on the meta device; returns their names, for `fill_quantized`."""
    names = block_linear_names(model)
    with torch.device("meta"):
        for name in names:
            parent_name, _, child_name = name.rpartition(".")
            linear = model.get_submodule(name)
            assert isinstance(linear, nn.Linear)
            replacement = QuantizedLinear(linear.in_features, linear.out_features, linear.bias is not None)
            setattr(model.get_submodule(parent_name), child_name, replacement)
    return names


def quantize_block_weight(weight: torch.Tensor, quantize: str, dtype: torch.dtype) -> QuantizedWeight:
    """A block projection's weight [out, in] in the `quantize` format, scales in `dtype`."""
    if quantize == "fp8":
        return quantize_fp8_blocks(weight)
    return quantize_weight(weight, load_time_format(quantize).layers, dtype)


def fill_quantized(
    model: nn.Module,
    names: list[str],
    checkpoint,
    quantize: str,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Quantize each held projection's weight as it is read from `checkpoint` (anything with
    `read(name)`, like `engine.checkpoint.Checkpoint`), one at a time, and move it to `device`."""
    for name in names:
        module = model.get_submodule(name)
        assert isinstance(module, QuantizedLinear)
        weight = quantize_block_weight(checkpoint.read(f"{name}.weight"), quantize, dtype)
        module.set_weight(weight.to(device).contiguous())
        # Unmap the 16-bit file after each weight, so its pages do not add up in memory while
        # the quantized copies are made (the next read maps it again).
        getattr(checkpoint, "close", lambda: None)()
        release_freed_memory()
