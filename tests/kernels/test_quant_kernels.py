"""The quantized Triton kernels (engine/cuda/quant_kernels.py) against the dequantized weight's
product: int4 (with and without zero points), int8 (groups, one scale a row), FP8 (blocks,
ragged blocks, one scale a tensor); one row, a decode batch and a prefill; gated or not.

On a CPU they run in Triton's interpreter with explicit block sizes (autotuning needs a GPU);
on a GPU (TANDEM_TEST_DEVICE=cuda) both with those block sizes and autotuned, in bfloat16 too.
"""

from __future__ import annotations

import pytest
import torch
from interpreter import BFLOAT16, INTERPRETED  # before triton: picks the interpreter on CPUs

from conftest import TEST_DEVICE

triton = pytest.importorskip("triton")

from tandem.engine.cuda.quant_matmul import quantized_linear  # noqa: E402
from tandem.engine.quant.weight import QuantizedWeight, pack_int4  # noqa: E402

N, K = 48, 200  # neither a multiple of the blocks below; K is not a whole number of groups

# One row on the CUDA cores, a decode batch and a prefill on the tensor cores.
CONFIGS = {
    "row": {"row": True, "BLOCK_N": 16, "BLOCK_K": 64},
    "decode": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64},
    "prefill": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32},
}
ROWS = {"row": 1, "decode": 5, "prefill": 40}


def random_weight(kind: str, group: int, zeros: bool, block_rows: int = 1, out: int = N, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    groups = -(-K // group)
    scale_rows = -(-out // block_rows)
    scales = torch.rand(scale_rows, groups, generator=generator) * 0.02 + 0.005
    held_zeros = None
    if kind == "int4":
        values = torch.randint(0, 16, (out, K), generator=generator)
        data = pack_int4(values)
        if zeros:
            held_zeros = torch.randint(0, 16, (out, groups), generator=generator).to(torch.uint8)
    elif kind == "int8":
        data = torch.randint(-128, 128, (out, K), generator=generator).to(torch.int8)
        if zeros:
            held_zeros = torch.randint(-20, 20, (out, groups), generator=generator).to(torch.int16)
    else:
        data = (torch.randn(out, K, generator=generator) * 40).to(torch.float8_e4m3fn)
    weight = QuantizedWeight(kind, (out, K), data, scales, group, block_rows, zeros=held_zeros)
    return weight.to(TEST_DEVICE)


WEIGHTS = {
    "int4-groups-zeros": dict(kind="int4", group=64, zeros=True),
    "int4-groups-symmetric": dict(kind="int4", group=32, zeros=False),
    "int8-rows": dict(kind="int8", group=K, zeros=False),
    "int8-groups-zeros": dict(kind="int8", group=64, zeros=True),
    "fp8-ragged-blocks": dict(kind="fp8", group=32, zeros=False, block_rows=20),
    "fp8-per-tensor": dict(kind="fp8", group=K, zeros=False, block_rows=N),
}


def expected_product(x: torch.Tensor, weight: QuantizedWeight, gated: bool) -> torch.Tensor:
    product = x.float() @ weight.dequantize(torch.float32).T
    if not gated:
        return product
    gate, up = product.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


DTYPES = [torch.float32, torch.float16, BFLOAT16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_quantized_product_matches_the_dequantized_weight(name, shape, dtype):
    weight = random_weight(**WEIGHTS[name])
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS[shape], K, generator=generator).to(TEST_DEVICE, dtype)
    out = quantized_linear(x, weight, config=CONFIGS[shape])
    assert out.dtype == dtype and out.shape == (ROWS[shape], N)
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3}.get(dtype, 2e-2)
    expected = expected_product(x, weight, False)
    torch.testing.assert_close(
        out.float(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item()
    )


@pytest.mark.parametrize("shape", sorted(CONFIGS))
@pytest.mark.parametrize("name", ["int4-groups-zeros", "int8-rows", "fp8-ragged-blocks"])
def test_gated_product_is_silu_of_gate_times_up(name, shape):
    weight = random_weight(**WEIGHTS[name], out=2 * N)  # gate rows, then up rows
    x = torch.randn(ROWS[shape], K, generator=torch.Generator().manual_seed(2)).to(TEST_DEVICE)
    out = quantized_linear(x, weight, gated=True, config=CONFIGS[shape])
    assert out.shape == (ROWS[shape], N)
    expected = expected_product(x, weight, True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.skipif(INTERPRETED, reason="autotuning needs a GPU")
@pytest.mark.parametrize("rows", [1, 5, 16, 300])
@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_autotuned_kernels_match_in_bfloat16(name, rows):
    weight = random_weight(**WEIGHTS[name], out=512)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(3)).to(TEST_DEVICE, torch.bfloat16)
    expected = expected_product(x, weight, False)
    out = quantized_linear(x, weight)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


@pytest.mark.parametrize("gated", [False, True])
def test_fp8_tensor_core_prefill_is_close_to_the_weight_only_product(gated):
    """FP8 × FP8 on the tensor cores (prefill on GPUs of compute capability 8.9+): activations
    are scaled into FP8 per row and block of 128 inputs. On a GPU the product must match that
    scheme emulated in float32; the interpreter converts to FP8 by its own rounding, so there it
    must only be as close to the weight-only product as FP8 activations allow."""
    weight = QuantizedWeight(
        "fp8",
        (2 * N if gated else N, 256),
        (torch.randn(2 * N if gated else N, 256, generator=torch.Generator().manual_seed(4)) * 40).to(
            torch.float8_e4m3fn
        ),
        torch.rand(-(-(2 * N if gated else N) // 128), 2, generator=torch.Generator().manual_seed(5)) * 0.02
        + 0.005,
        128,
        128,
    ).to(TEST_DEVICE)
    x = torch.randn(40, 256, generator=torch.Generator().manual_seed(6)).to(TEST_DEVICE, torch.float16)
    config = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 128, "fp8_activations": True}
    out = quantized_linear(x, weight, gated=gated, config=config)
    if INTERPRETED:
        expected = expected_product(x, weight, gated)
        torch.testing.assert_close(out.float(), expected, rtol=0.2, atol=0.1 * expected.abs().max().item())
        return
    blocks = x.float().view(x.shape[0], -1, 128)
    scale = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 448
    emulated = ((blocks / scale).to(torch.float8_e4m3fn).float() * scale).view_as(x)
    expected = expected_product(emulated, weight, gated)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())
