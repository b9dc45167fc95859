"""The FLUX.1 transformer's Triton kernels against the eager code they replace (on a GPU for
real, on a CPU in Triton's interpreter)."""

from __future__ import annotations

import pytest
import torch
from interpreter import BFLOAT16  # before triton: picks the interpreter on CPUs

from conftest import TEST_DEVICE

triton = pytest.importorskip("triton")

from tandem.engine.cuda import flux_kernels  # noqa: E402
from tandem.engine.models.flux import RMSNorm, apply_rotary, layer_norm, rotary_tables  # noqa: E402

DTYPES = [BFLOAT16, torch.float32]


def _close(dtype):
    # float32: the kernels sum in another order; bfloat16: one rounding step at most
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1.6e-2}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [2, 3])
def test_norm_rope_matches_eager(dtype, heads):
    """RMSNorm then rotary, read from a slice of a fused q/k/v output, written at an offset."""
    generator = torch.Generator().manual_seed(0)
    batch, tokens, head_dim, offset = 2, 5, 16, 3
    fused = torch.randn(batch, tokens, 3 * heads * head_dim, generator=generator).to(TEST_DEVICE, dtype)
    x = fused[..., heads * head_dim : 2 * heads * head_dim].unflatten(-1, (heads, head_dim))  # the keys
    norm = RMSNorm(head_dim).to(TEST_DEVICE)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(head_dim, generator=generator))
    norm = norm.to(dtype)
    ids = torch.stack([torch.zeros(12), torch.arange(12.0) % 4, torch.arange(12.0) // 4], dim=1)
    cos, sin = rotary_tables(ids.to(TEST_DEVICE), (4, 6, 6), 10000.0)
    out = torch.zeros(batch, offset + tokens + 4, heads, head_dim, device=TEST_DEVICE, dtype=dtype)
    with torch.no_grad():
        flux_kernels.norm_rope(x, norm.weight, norm.eps, cos, sin, out, offset)
        expected = apply_rotary(norm(x), (cos[offset : offset + tokens], sin[offset : offset + tokens]))
    torch.testing.assert_close(out[:, offset : offset + tokens], expected, **_close(dtype))
    assert not out[:, :offset].any() and not out[:, offset + tokens :].any()  # nothing written outside


@pytest.mark.parametrize("dtype", DTYPES)
def test_modulate_matches_eager(dtype):
    generator = torch.Generator().manual_seed(1)
    batch, tokens, width = 2, 7, 48  # a width that is not a power of two: masked columns
    x = (3 * torch.randn(batch, tokens, width, generator=generator) + 1).to(TEST_DEVICE, dtype)
    modulation = torch.randn(batch, 6 * width, generator=generator).to(TEST_DEVICE, dtype)
    shift, scale = modulation.chunk(6, dim=1)[:2]  # views with a stride of 6 · width between images
    out = flux_kernels.modulate(x, shift, scale)
    expected = layer_norm(x) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(out, expected, **_close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_gelu_matches_eager(dtype):
    generator = torch.Generator().manual_seed(2)
    batch, tokens, dim, mlp = 2, 5, 24, 96
    attention = torch.randn(batch, tokens, dim, generator=generator).to(TEST_DEVICE, dtype)
    projected = (2 * torch.randn(batch, tokens, 3 * dim + mlp, generator=generator)).to(TEST_DEVICE, dtype)
    out = flux_kernels.attention_gelu(attention, projected[..., 3 * dim :])
    expected = torch.cat(
        [attention, torch.nn.functional.gelu(projected[..., 3 * dim :], approximate="tanh")], -1
    )
    torch.testing.assert_close(out, expected, **_close(dtype))
