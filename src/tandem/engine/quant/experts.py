"""`QuantizedExperts`: the routed experts of a mixture-of-experts layer held compact, in the
place of `models.moe.Experts` (which holds them as 16-bit stacked banks).

Each held expert's gate and up projections are joined along their outputs and the experts
stacked into one bank per projection, in the engine's `QuantizedWeight` layout:
`gate_up` [count, 2 × inner, hidden] and `down` [count, hidden, inner]. The banks' tensors are
registered as parameters (`gate_up_proj_data`, `…_scales`, `…_zeros`, `down_proj_…`), so
moving, counting and listing a model see them like any weight.

On CUDA, a decode step (up to `DECODE_ROWS` tokens, and always inside a graph capture) runs
the fused gather kernels of `engine/cuda/quant_moe.py`: the chosen experts' compact weights read
by the expert ids on the device, no host sync, so quantized mixtures decode in CUDA graphs.
Otherwise the product loops over the held experts that got tokens, in expert order (as
`transformers` sums them): on CUDA each expert's rows go through the quantized Triton kernels of
the dense layers (`engine/cuda/quant_matmul.py`, on a view of the bank: no copy), on CPUs through
the packed int8 kernel or products over dequantized chunks (`quant/cpu.py`), never a 16-bit copy
of the bank.
"""

from __future__ import annotations

import torch
from torch import nn

from tandem.engine.quant import cpu
from tandem.engine.quant.weight import QuantizedWeight

_BANKS = ("gate_up_proj", "down_proj")
# Tokens up to which CUDA decodes through the fused gather kernels (`cuda/quant_moe.py`), as
# `cuda/moe.DECODE_ROWS` for 16-bit experts; during a graph capture they always run.
DECODE_ROWS = 64
_ROLES = ("data", "scales", "zeros")


class QuantizedExperts(nn.Module):
    """Experts `[first, first + count)` of `num_experts`, quantized (see the module doc). Built
    empty; `set_banks` fills it."""

    def __init__(
        self,
        num_experts: int,
        first: int,
        count: int,
        hidden: int,
        inner: int,
        names: tuple[str, str, str],
        round_weights: bool,
    ) -> None:
        super().__init__()
        self.num_experts, self.first, self.count = num_experts, first, count
        self.hidden, self.inner = hidden, inner
        self.names, self.round_weights = names, round_weights
        self.layouts: dict[str, tuple[str, int, int]] = {}  # bank -> (kind, group size, block rows)
        for bank in _BANKS:
            for role in _ROLES:
                self.register_parameter(f"{bank}_{role}", None)

    def sources(self, prefix: str) -> dict:
        """Nothing for the dense loader: `quant.loading` reads the experts (see `Experts.sources`)."""
        return {}

    def expert_modules(self, prefix: str) -> list[tuple[str, str, str]]:
        """Checkpoint modules (gate, up, down) of each held expert, in order."""
        gate, up, down = self.names
        held = range(self.first, self.first + self.count)
        return [(f"{prefix}.{e}.{gate}", f"{prefix}.{e}.{up}", f"{prefix}.{e}.{down}") for e in held]

    # --- the banks ---------------------------------------------------------------------------

    def set_banks(self, gate_up: QuantizedWeight, down: QuantizedWeight) -> None:
        expected = {
            "gate_up_proj": (self.count, 2 * self.inner, self.hidden),
            "down_proj": (self.count, self.hidden, self.inner),
        }
        for bank, weight in zip(_BANKS, (gate_up, down), strict=True):
            if weight.shape != expected[bank]:
                raise ValueError(f"a {weight.shape} bank cannot fill {bank} {expected[bank]}")
            if weight.input_order is not None:
                raise ValueError("expert banks hold their inputs in order")
            held = weight.tensors()
            for role in _ROLES:
                name = f"{bank}_{role}"
                del self._parameters[name]
                tensor = held.get(role)
                self.register_parameter(
                    name, None if tensor is None else nn.Parameter(tensor, requires_grad=False)
                )
            self.layouts[bank] = (weight.kind, weight.group_size, weight.block_rows)

    def bank(self, name: str) -> QuantizedWeight:
        """The bank `gate_up_proj` or `down_proj` as one `QuantizedWeight` [count, out, in]."""
        kind, group, rows = self.layouts[name]
        shape = expected_shape(name, self.count, self.hidden, self.inner)
        return QuantizedWeight(
            kind,
            shape,
            self._parameters[f"{name}_data"],  # type: ignore[arg-type]
            self._parameters[f"{name}_scales"],  # type: ignore[arg-type]
            group,
            rows,
            zeros=self._parameters[f"{name}_zeros"],
        )

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def prepare_for_cpu(self, dtype: torch.dtype) -> None:
        """Integer scales in the activation dtype (what the CPU kernels multiply by)."""
        for bank in _BANKS:
            scales = self._parameters[f"{bank}_scales"]
            if scales is not None and self.layouts[bank][0] != "fp8" and scales.dtype != dtype:
                self._parameters[f"{bank}_scales"] = nn.Parameter(scales.to(dtype), requires_grad=False)

    # --- products ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: [N, hidden]; experts, weights: [N, k]. The weighted sum of the held experts'
        outputs for each token ([N, hidden]); experts held elsewhere contribute nothing here."""
        from tandem.engine import ops

        gate_up, down = self.bank("gate_up_proj"), self.bank("down_proj")
        kernels = x.is_cuda and ops.kernels_available()
        if kernels and (x.shape[0] <= DECODE_ROWS or torch.cuda.is_current_stream_capturing()):
            from tandem.engine.cuda.quant_moe import fused_quantized_experts

            return fused_quantized_experts(x, gate_up, down, experts, weights, self.first, self.round_weights)
        return expert_sum(x, gate_up, down, experts, weights, self.first, self.round_weights, kernels=kernels)

    def extra_repr(self) -> str:
        kind = self.layouts.get("down_proj", ("empty",))[0]
        return f"experts {self.first}..{self.first + self.count - 1} of {self.num_experts}, {kind}"


def expected_shape(bank: str, count: int, hidden: int, inner: int) -> tuple[int, int, int]:
    return (count, 2 * inner, hidden) if bank == "gate_up_proj" else (count, hidden, inner)


def expert_sum(
    x: torch.Tensor,
    gate_up: QuantizedWeight,
    down: QuantizedWeight,
    experts: torch.Tensor,
    weights: torch.Tensor,
    first: int,
    round_weights: bool,
    kernels: bool,
    config: dict | None = None,
) -> torch.Tensor:
    """The routed sum over the banks' experts `[first, first + count)` (see `forward`); `kernels`:
    the products run in the quantized Triton kernels (CUDA, or Triton's interpreter in tests,
    with `config` their block sizes, as `quantized_linear` takes)."""
    from tandem.engine.models.moe import weigh

    out = torch.zeros_like(x)
    local = experts - first  # [N, k]
    held = (local >= 0) & (local < gate_up.shape[0])
    for expert in torch.unique(local[held]).tolist():  # ascending, as transformers sums them
        slot, token = torch.where(local.T.eq(expert))
        activations = expert_product(x[token], gate_up.expert(expert), True, kernels, config)  # [n, inner]
        y = expert_product(activations, down.expert(expert), False, kernels, config)  # [n, hidden]
        out.index_add_(0, token, weigh(y, weights[token, slot, None], round_weights))
    return out


def expert_product(
    rows: torch.Tensor, weight: QuantizedWeight, gated: bool, kernels: bool, config: dict | None = None
) -> torch.Tensor:
    """rows [n, in] times one expert's quantized weight [out, in]ᵀ: [n, out], or with `gated`
    silu(gate) * up of its two halves, [n, out / 2]."""
    from tandem.engine import ops

    if kernels:
        from tandem.engine.cuda.quant_matmul import quantized_linear

        return quantized_linear(rows, weight, gated=gated, config=config)
    if rows.device.type == "cpu" and cpu.int8_kernel_fits(weight) and rows.shape[0] < cpu.DEQUANTIZE_ROWS:
        y = cpu.int8_product(rows, weight.data, weight.scales.reshape(-1).to(rows.dtype))
    else:
        y = cpu.dequantized_product(rows, weight)
    return ops.silu_mul(y) if gated else y
