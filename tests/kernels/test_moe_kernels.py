"""The routed-expert kernels of the CUDA path (`engine/cuda/moe.py`) against the eager loop over
experts they replace. On a GPU they run for real, on a CPU in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
from interpreter import BFLOAT16, INTERPRETED  # before triton: picks the interpreter on CPUs

from conftest import TEST_DEVICE

triton = pytest.importorskip("triton")

from tandem.engine.cuda.moe import fused_decode_experts  # noqa: E402
from tandem.engine.models.moe import weigh  # noqa: E402


def eager(x, gate_up, down, experts, weights, first, round_weights):
    """The CPU path's arithmetic: one product per held expert, weighted, summed in expert order."""
    out = torch.zeros_like(x)
    local = experts - first
    for expert in range(gate_up.shape[0]):
        token, slot = torch.where(local == expert)
        if token.numel() == 0:
            continue
        gate, up = (x[token] @ gate_up[expert].T).chunk(2, dim=-1)
        y = (torch.nn.functional.silu(gate) * up) @ down[expert].T
        out.index_add_(0, token, weigh(y, weights[token, slot, None], round_weights))
    return out


def routed(tokens: int, num_experts: int, top_k: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    experts = torch.stack([torch.randperm(num_experts, generator=generator)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=generator) + 0.1
    return experts.to(TEST_DEVICE), weights.to(TEST_DEVICE)


@pytest.mark.parametrize("dtype", [BFLOAT16, torch.float32])
@pytest.mark.parametrize(
    ("tokens", "num_experts", "top_k", "first", "count"),
    [
        (1, 5, 2, 0, 5),  # one decode token, every expert held
        (5, 7, 3, 0, 7),
        (4, 8, 2, 3, 3),  # expert parallelism: this rank holds experts 3-5 of 8
        (3, 6, 1, 4, 2),  # top-1; some tokens' expert held elsewhere
    ],
)
@pytest.mark.parametrize("round_weights", [False, True])
def test_fused_decode_experts_match_the_eager_loop(
    dtype, tokens, num_experts, top_k, first, count, round_weights
):
    generator = torch.Generator().manual_seed(tokens * 100 + num_experts)
    hidden, inner = 56, 22  # odd sizes: masked tails in both kernels
    x = torch.randn(tokens, hidden, generator=generator).to(TEST_DEVICE, dtype)
    gate_up = (torch.randn(count, 2 * inner, hidden, generator=generator) / hidden**0.5).to(
        TEST_DEVICE, dtype
    )
    down = (torch.randn(count, hidden, inner, generator=generator) / inner**0.5).to(TEST_DEVICE, dtype)
    experts, weights = routed(tokens, num_experts, top_k, generator)
    expected = eager(x, gate_up, down, experts, weights, first, round_weights)
    out = fused_decode_experts(x, gate_up, down, experts, weights, first, round_weights)
    assert out.dtype == dtype and out.shape == (tokens, hidden)
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out, expected, **tolerance)


@pytest.mark.skipif(INTERPRETED, reason="grouped products need CUDA")
def test_grouped_prefill_products_match_the_eager_loop():
    from tandem.engine.cuda.moe import _grouped_product_works, grouped_experts

    if not _grouped_product_works(torch.bfloat16):
        pytest.skip("torch._grouped_mm does not run on this GPU")
    generator = torch.Generator().manual_seed(9)
    tokens, hidden, inner, num_experts, top_k = 300, 256, 128, 16, 4
    x = torch.randn(tokens, hidden, generator=generator).to(TEST_DEVICE, torch.bfloat16)
    gate_up = (torch.randn(8, 2 * inner, hidden, generator=generator) / 16).to(TEST_DEVICE, torch.bfloat16)
    down = (torch.randn(8, hidden, inner, generator=generator) / 11).to(TEST_DEVICE, torch.bfloat16)
    experts, weights = routed(tokens, num_experts, top_k, generator)
    expected = eager(x, gate_up, down, experts, weights, 4, False)  # experts 4-11 held here
    out = grouped_experts(x, gate_up, down, experts, weights, 4, False)
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=3e-2)
