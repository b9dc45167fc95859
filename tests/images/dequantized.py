"""The reference for a FLUX.1 checkpoint loaded with `quantize`: diffusers' FluxPipeline on the
same files, its transformer's block projections quantized and dequantized by the test's own
rule (`tests/quant_checkpoints.py`, written independently of the engine)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from quant_checkpoints import int4_groups, int8_rows

BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")


def dequantized_reference(checkpoint, mode: str):
    """FluxPipeline on the checkpoint's components, its transformer's block projections
    quantized and dequantized as `quantize: mode` documents it."""
    from diffusers import FluxPipeline  # pyright: ignore[reportPrivateImportUsage]

    transformer = copy.deepcopy(checkpoint.pipeline.transformer)
    rule = int8_rows if mode == "int8" else lambda w: int4_groups(w, 128)
    changed = 0
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if isinstance(module, nn.Linear) and name.startswith(BLOCKS):
                module.weight.copy_(rule(module.weight))
                changed += 1
    assert changed == 2 * 14 + 3 * 6  # every projection of 2 double and 3 single blocks
    pipeline = FluxPipeline(**{**checkpoint.pipeline.components, "transformer": transformer.eval()})
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
