"""Quantized routed experts through the quantized Triton kernels (`quant.experts.expert_sum`
with `kernels`, the CUDA path) against the experts' dequantized weights: int4 with zero points,
int8 rows and FP8 blocks; a decode batch and a prefill; experts held elsewhere (expert
parallelism) adding nothing. On a CPU in Triton's interpreter, on a GPU for real."""

from __future__ import annotations

import pytest
import torch
from interpreter import INTERPRETED  # before triton: picks the interpreter on CPUs

from conftest import TEST_DEVICE

triton = pytest.importorskip("triton")

from tandem.engine.quant.experts import expert_sum  # noqa: E402
from tandem.engine.quant.quantize import quantize_fp8_blocks, quantize_int4_groups, quantize_int8_rows  # noqa: E402
from tandem.engine.quant.weight import stack  # noqa: E402

EXPERTS, TOP_K, HIDDEN, INNER = 5, 2, 64, 32
CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}
QUANTIZERS = {
    "int4": lambda w: quantize_int4_groups(w, 32, torch.float32),
    "int8": lambda w: quantize_int8_rows(w, torch.float32),
    "fp8": lambda w: quantize_fp8_blocks(w, 32),
}


def banks(kind: str):
    generator = torch.Generator().manual_seed(0)
    gate_up = [
        QUANTIZERS[kind](torch.randn(2 * INNER, HIDDEN, generator=generator) * 0.1) for _ in range(EXPERTS)
    ]
    down = [QUANTIZERS[kind](torch.randn(HIDDEN, INNER, generator=generator) * 0.1) for _ in range(EXPERTS)]
    return stack(gate_up).to(TEST_DEVICE), stack(down).to(TEST_DEVICE)


def expected_sum(x, gate_up, down, experts, weights, first):
    out = torch.zeros_like(x)
    for token in range(x.shape[0]):
        for slot in range(experts.shape[1]):
            local = int(experts[token, slot]) - first
            if not 0 <= local < gate_up.shape[0]:
                continue
            gate, up = (x[token] @ gate_up.expert(local).dequantize().T).chunk(2)
            y = (torch.nn.functional.silu(gate) * up) @ down.expert(local).dequantize().T
            out[token] += y * weights[token, slot]
    return out


@pytest.mark.parametrize("rows", [3, 40])
@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_quantized_experts_match_their_dequantized_weights(kind, rows):
    gate_up, down = banks(kind)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(rows, HIDDEN, generator=generator).to(TEST_DEVICE)
    experts = torch.stack([torch.randperm(EXPERTS, generator=generator)[:TOP_K] for _ in range(rows)])
    weights = torch.rand(rows, TOP_K, generator=generator)
    experts, weights = experts.to(TEST_DEVICE), weights.to(TEST_DEVICE)
    for first, count in ((0, EXPERTS), (2, 3)):  # all experts, and a rank holding experts 2..4
        held_up, held_down = gate_up, down
        if count != EXPERTS:
            held_up = stack([gate_up.expert(e) for e in range(first, first + count)])
            held_down = stack([down.expert(e) for e in range(first, first + count)])
        ours = expert_sum(x, held_up, held_down, experts, weights, first, False, kernels=True, config=CONFIG)
        expected = expected_sum(x, held_up, held_down, experts, weights, first)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


FUSED_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 32}


@pytest.mark.parametrize("round_weights", [False, True])
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_fused_quantized_gather_matches_the_dequantized_experts(kind, rows, round_weights):
    """The decode kernels that read each token's chosen experts from the compact banks by the
    ids in a device tensor (graph-safe): the dequantized reference, a rank's share of the
    experts included (the others' ids read nothing)."""
    from tandem.engine.cuda.quant_moe import fused_quantized_experts

    gate_up, down = banks(kind)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(rows, HIDDEN, generator=generator).to(TEST_DEVICE)
    experts = torch.stack([torch.randperm(EXPERTS, generator=generator)[:TOP_K] for _ in range(rows)])
    weights = torch.rand(rows, TOP_K, generator=generator)
    experts, weights = experts.to(TEST_DEVICE), weights.to(TEST_DEVICE)
    for first, count in ((0, EXPERTS), (2, 3)):
        held_up = stack([gate_up.expert(e) for e in range(first, first + count)])
        held_down = stack([down.expert(e) for e in range(first, first + count)])
        ours = fused_quantized_experts(
            x, held_up, held_down, experts, weights, first, round_weights, config=FUSED_CONFIG
        )
        expected = expected_sum(x, held_up, held_down, experts, weights, first)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        assert ours.abs().max() > 0


def test_fused_quantized_gather_reads_odd_sizes():
    """Inputs and features that fill no block: 40 inputs in int4 groups of 8, 24 inner features, 3 of 4 experts."""
    from tandem.engine.cuda.quant_moe import fused_quantized_experts

    generator = torch.Generator().manual_seed(3)
    hidden, inner, count = 40, 24, 4
    quantize = lambda w: quantize_int4_groups(w, 8, torch.float32)  # noqa: E731
    gate_up = stack(
        [quantize(torch.randn(2 * inner, hidden, generator=generator) * 0.1) for _ in range(count)]
    )
    down = stack([quantize(torch.randn(hidden, inner, generator=generator) * 0.1) for _ in range(count)])
    gate_up, down = gate_up.to(TEST_DEVICE), down.to(TEST_DEVICE)
    x = torch.randn(2, hidden, generator=generator).to(TEST_DEVICE)
    experts = torch.tensor([[3, 0, 1], [2, 3, 0]], device=TEST_DEVICE)
    weights = torch.rand(2, 3, generator=generator).to(TEST_DEVICE)
    ours = fused_quantized_experts(x, gate_up, down, experts, weights, 0, False, config=FUSED_CONFIG)
    expected = expected_sum(x, gate_up, down, experts, weights, 0)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.skipif(INTERPRETED, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_quantized_experts_decode_inside_a_cuda_graph(kind):
    """`QuantizedExperts` at decode is captured in a CUDA graph, and a replay with other experts
    chosen (written into the captured routing tensor) gives the new experts' sum: the gather
    reads the ids on the device, nothing was fixed at capture."""
    from tandem.engine.quant.experts import QuantizedExperts

    gate_up, down = banks(kind)
    module = QuantizedExperts(
        EXPERTS, 0, EXPERTS, HIDDEN, INNER, ("gate_proj", "up_proj", "down_proj"), False
    )
    module.set_banks(gate_up, down)
    dtype = torch.bfloat16
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(4, HIDDEN, generator=generator).to(TEST_DEVICE, dtype)
    experts = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 2]], device=TEST_DEVICE)
    weights = torch.rand(4, TOP_K, generator=generator).to(TEST_DEVICE)
    with torch.inference_mode():
        module(x, experts, weights)  # autotune outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = module(x, experts, weights)
        experts.copy_(torch.tensor([[3, 4], [0, 1], [2, 4], [3, 0]], device=TEST_DEVICE))
        graph.replay()
        torch.cuda.synchronize()
    expected = expected_sum(x.float(), gate_up, down, experts, weights, 0)
    torch.testing.assert_close(out.float(), expected, rtol=3e-2, atol=3e-2 * expected.abs().max().item())
