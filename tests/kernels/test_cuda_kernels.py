"""The Triton kernels of the CUDA decode path against the eager code they replace.

On a GPU they run for real, on a CPU in Triton's interpreter (see interpreter.py). Skipped
where Triton is not installed.
"""

from __future__ import annotations

import pytest
import torch
from interpreter import BFLOAT16, INTERPRETED  # before triton: picks the interpreter on CPUs

from conftest import TEST_DEVICE

triton = pytest.importorskip("triton")

from tandem.engine.attention import attention_masks  # noqa: E402
from tandem.engine.cuda import kernels  # noqa: E402
from tandem.engine.kv_cache import gather_blocks  # noqa: E402
from tandem.engine.models.llama import RMSNorm  # noqa: E402
from tandem.engine.rope import apply_rotary  # noqa: E402

DTYPES = [BFLOAT16, torch.float32]
EXACT = {"rtol": 0, "atol": 0}


def random(*shape, dtype, generator):
    return torch.randn(*shape, generator=generator).to(device=TEST_DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_eager_bit_for_bit(dtype, with_residual):
    generator = torch.Generator().manual_seed(0)
    x, residual = (
        random(3, 320, dtype=dtype, generator=generator),
        random(3, 320, dtype=dtype, generator=generator),
    )
    norm = RMSNorm(320, 1e-5).to(TEST_DEVICE)
    with torch.no_grad():
        norm.weight.copy_(random(320, dtype=torch.float32, generator=generator))
    norm = norm.to(dtype)
    summed_eager = x + residual if with_residual else x
    expected = norm(summed_eager)
    out, summed = kernels.rms_norm(x, norm.weight, 1e-5, residual if with_residual else None)
    torch.testing.assert_close(out, expected, **EXACT)
    if with_residual:
        torch.testing.assert_close(summed, summed_eager, **EXACT)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_eager(dtype):
    generator = torch.Generator().manual_seed(1)
    gate_up = random(2, 1, 2 * 1500, dtype=dtype, generator=generator)
    gate, up = gate_up.chunk(2, dim=-1)
    # exp is computed by different code than PyTorch's: allow one step of the dtype
    step = 2**-7 if dtype == torch.bfloat16 else 2**-22
    torch.testing.assert_close(
        kernels.silu_mul(gate_up), torch.nn.functional.silu(gate) * up, rtol=step, atol=1e-6
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_and_cache_write(dtype):
    generator = torch.Generator().manual_seed(2)
    batch, heads, kv_heads, head_dim, blocks, block_size = 3, 8, 2, 32, 9, 16
    qkv = random(batch, (heads + 2 * kv_heads) * head_dim, dtype=dtype, generator=generator)
    angles = torch.rand(batch, head_dim // 2, generator=generator) * 6
    angles = torch.cat([angles, angles], -1)
    cos, sin = angles.cos().to(TEST_DEVICE, dtype), angles.sin().to(TEST_DEVICE, dtype)
    # block tables out of order, padded with the scratch block (8)
    table = torch.tensor([[4, 8, 8], [0, 7, 8], [2, 5, 6]], device=TEST_DEVICE)
    positions = torch.tensor([0, 17, 39], device=TEST_DEVICE)
    k_cache = torch.zeros(blocks, kv_heads, block_size, head_dim, dtype=dtype, device=TEST_DEVICE)
    v_cache = torch.zeros_like(k_cache)
    q_out = kernels.rotary_and_cache_write(qkv, cos, sin, table, positions, k_cache, v_cache, heads, kv_heads)

    q, k, v = qkv.view(batch, 1, -1, head_dim).split([heads, kv_heads, kv_heads], dim=2)
    q_expected = apply_rotary(q.transpose(1, 2), cos[:, None], sin[:, None])[:, :, 0]
    k_expected = apply_rotary(k.transpose(1, 2), cos[:, None], sin[:, None])[:, :, 0]
    # x*cos + rotated*sin cancels where the two products nearly cancel: one product rounded
    # differently (the GPU fuses a multiply-add in float32; in bfloat16 ties may round apart)
    # moves the sum by one step of the products' size. Allow that; the engine tests check tokens.
    step = 2**-8 if dtype == torch.bfloat16 else 2**-23
    rotary_tolerance = {"rtol": 0, "atol": 2 * step * float(qkv.abs().max())}
    torch.testing.assert_close(q_out, q_expected, **rotary_tolerance)
    for row in range(batch):
        position = int(positions[row])
        block, offset = int(table[row, position // block_size]), position % block_size
        torch.testing.assert_close(k_cache[block, :, offset], k_expected[row], **rotary_tolerance)
        torch.testing.assert_close(v_cache[block, :, offset], v[row, 0], rtol=0, atol=0)
    assert int((k_cache != 0).any(-1).sum()) == batch * kv_heads  # nothing else was written


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [None, 37])
def test_decode_attention_matches_sdpa(dtype, window):
    generator = torch.Generator().manual_seed(3)
    heads, kv_heads, head_dim, blocks, block_size, width = 8, 2, 64, 64, 16, 19  # 304 positions
    k_cache = random(blocks, kv_heads, block_size, head_dim, dtype=dtype, generator=generator)
    v_cache = random(blocks, kv_heads, block_size, head_dim, dtype=dtype, generator=generator)
    lengths = torch.tensor([1, 129, 300], device=TEST_DEVICE)  # one, past a partition, 19 blocks
    # each sequence's blocks scattered through the pool
    table = torch.randperm(blocks, generator=generator)[: 3 * width].view(3, width).to(TEST_DEVICE)
    q = random(3, heads, head_dim, dtype=dtype, generator=generator)
    out = kernels.decode_attention(q, k_cache, v_cache, table, lengths, window, head_dim**-0.5)
    positions = (lengths - 1)[:, None]
    max_length = width * block_size
    mask = attention_masks(positions, max_length, {window})[window]
    expected = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None].float(),
        gather_blocks(k_cache, table, max_length).float(),
        gather_blocks(v_cache, table, max_length).float(),
        attn_mask=mask,
        enable_gqa=True,
        scale=head_dim**-0.5,
    )[:, :, 0]
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.float(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.skipif(INTERPRETED, reason="autotuning needs a GPU")
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_a_float32_product(rows, with_bias):
    from tandem.engine.cuda.gemv import gemv

    generator = torch.Generator().manual_seed(4)
    weight = random(300, 1000, dtype=torch.bfloat16, generator=generator)
    x = random(rows, 1000, dtype=torch.bfloat16, generator=generator)
    bias = random(300, dtype=torch.bfloat16, generator=generator) if with_bias else None
    expected = x.float() @ weight.float().T + (bias.float() if bias is not None else 0)
    out = gemv(x, weight, bias)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 300)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=5e-2)


@pytest.mark.skipif(INTERPRETED, reason="autotuning needs a GPU")
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gated_gemv_is_silu_of_gate_times_up(rows, with_bias):
    from tandem.engine.cuda.gemv import gemv

    generator = torch.Generator().manual_seed(5)
    weight = random(2 * 300, 1000, dtype=torch.bfloat16, generator=generator) / 8
    x = random(rows, 1000, dtype=torch.bfloat16, generator=generator)
    bias = random(2 * 300, dtype=torch.bfloat16, generator=generator) if with_bias else None
    gate, up = (x.float() @ weight.float().T + (bias.float() if bias is not None else 0)).chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    out = gemv(x, weight, bias, gated=True)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 300)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=5e-2)
