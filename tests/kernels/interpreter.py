"""Where the Triton kernel tests run: on a GPU for real (TANDEM_TEST_DEVICE=cuda), on a CPU in
Triton's interpreter, which checks their logic (indexing, masking, synchronization by data)
though not GPU rounding. Import this before triton: the interpreter is chosen at import."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import TEST_DEVICE

INTERPRETED = TEST_DEVICE == "cpu"
if INTERPRETED:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The interpreter truncates float32 to bfloat16 where a GPU rounds to nearest, and its matrix
# products read bfloat16 as raw bits: bfloat16 is checked on a GPU only.
BFLOAT16 = pytest.param(
    torch.bfloat16, marks=pytest.mark.skipif(INTERPRETED, reason="bfloat16 needs a real GPU")
)
