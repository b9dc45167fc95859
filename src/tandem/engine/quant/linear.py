"""`QuantizedLinear` and `QuantizedEmbedding`: the modules the loader puts in place of
`nn.Linear` / `nn.Embedding` for quantized weights. Model code calls them through `ops.linear`
(and `ops.gated_linear` for the fused gate_up projection), which runs their `forward`.

The weight's tensors are registered as parameters (no gradient) named `weight_data`,
`weight_scales`, `weight_zeros`, `weight_input_order`, so moving, counting and listing a model
see them like any weight; `quantized` gives them back as one `QuantizedWeight`.

Where the product runs:
- CUDA (Triton): a quantized matrix-vector kernel for up to 16 rows, a matrix product that
  dequantizes tiles for more (`engine/cuda/quant_gemv.py`, `quant_matmul.py`).
- CPU: after `prepare_for_cpu`, int4 weights that fit torch's packed int4 kernel are held in
  its layout instead (and only there); int8 with a scale per row uses `_weight_int8pack_mm`;
  anything else, and many-row int8 products, multiply chunks of dequantized weights in fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from tandem.engine.quant import cpu
from tandem.engine.quant.weight import QuantizedWeight, concatenable, concatenate

_ROLES = ("data", "scales", "zeros", "input_order")


class QuantizedLinear(nn.Module):
    """y = x Wᵀ + b with W quantized. Built empty (on the meta device); `set_weight` fills it."""

    # The held tensors, registered as parameters named after their role (data and scales are
    # set once filled; zeros and an input order only where the format has them).
    weight_data: torch.Tensor
    weight_scales: torch.Tensor
    weight_zeros: torch.Tensor | None
    weight_input_order: torch.Tensor | None

    def __init__(
        self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None
        for role in _ROLES:
            self.register_parameter(f"weight_{role}", None)
        self.kind = ""
        self.group_size = 0
        self.block_rows = 1
        self.cpu_int4 = False  # the weight is held in torch's CPU int4 layout (`prepare_for_cpu`)

    # --- the weight --------------------------------------------------------------------------

    def set_weight(self, weight: QuantizedWeight) -> None:
        if weight.shape != (self.out_features, self.in_features):
            raise ValueError(
                f"a {weight.shape} weight cannot fill a {self.in_features}→{self.out_features} layer"
            )
        self.kind, self.group_size, self.block_rows = weight.kind, weight.group_size, weight.block_rows
        held = weight.tensors()
        self.__dict__.pop("_quantized", None)
        for role in _ROLES:
            name = f"weight_{role}"
            if name in self._parameters:
                del self._parameters[name]
            tensor = held.get(role)
            self.register_parameter(
                name, None if tensor is None else nn.Parameter(tensor, requires_grad=False)
            )
        self.cpu_int4 = False

    @property
    def quantized(self) -> QuantizedWeight:
        """The weight in the engine's layout (not available once held in the CPU int4 layout)."""
        if self.cpu_int4:
            raise RuntimeError("this layer holds its weight in torch's CPU int4 layout")
        held = tuple(self._parameters[f"weight_{role}"] for role in _ROLES)
        cached = self.__dict__.get("_quantized")
        if cached is not None and cached[0] == tuple(map(id, held)):
            return cached[1]  # built once per set of tensors: it is asked for on every product
        weight = QuantizedWeight(
            self.kind,
            (self.out_features, self.in_features),
            self.weight_data,
            self.weight_scales,
            self.group_size,
            self.block_rows,
            zeros=self.weight_zeros,
            input_order=self.weight_input_order,
        )
        self.__dict__["_quantized"] = (tuple(map(id, held)), weight)
        return weight

    def weight_bytes(self) -> int:
        return sum(
            p.numel() * p.element_size()
            for name, p in self._parameters.items()
            if p is not None and name != "bias"
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W [out, in] in the logical input order (tests and diagnostics; slow in the CPU int4 layout)."""
        if not self.cpu_int4:
            return self.quantized.dequantize(dtype)
        # The kernel's layout is private to torch: read it back through the kernel itself.
        identity = torch.eye(self.in_features, dtype=self.weight_scales.dtype)
        held = self._int4_product(identity).T.to(dtype)  # [out, in], held input order
        if self.weight_input_order is None:
            return held
        logical = torch.empty_like(held)
        logical[:, self.weight_input_order] = held
        return logical

    def prepare_for_cpu(self, dtype: torch.dtype) -> None:
        """Hold the weight the way the CPU kernels want it (call once, after any fusing)."""
        weight = self.quantized
        # torch's int4 kernel is fast in 16 bits only: float32 runs multiply dequantized chunks
        if cpu.int4_kernel_fits(weight) and dtype in (torch.bfloat16, torch.float16):
            packed, scales_and_zeros = cpu.int4_kernel_form(weight, dtype)
            for role in ("data", "zeros"):
                self.register_parameter(f"weight_{role}", None)
            self.weight_data = nn.Parameter(packed, requires_grad=False)
            self.weight_scales = nn.Parameter(scales_and_zeros, requires_grad=False)
            self.cpu_int4 = True
            self.__dict__.pop("_quantized", None)  # it would keep the unpacked weight alive
        elif weight.kind != "fp8" and weight.scales.dtype != dtype:
            self.weight_scales = nn.Parameter(weight.scales.to(dtype), requires_grad=False)
            self.__dict__.pop("_quantized", None)

    # --- products ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.product(x)
        return y if self.bias is None else y + self.bias

    def product(self, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        """x Wᵀ without the bias, [..., out] (gated: silu(gate) * up of the two halves, [..., out / 2])."""
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)  # [M, in]
        if self.weight_input_order is not None:
            rows = rows.index_select(-1, self.weight_input_order)  # the held order of the inputs
        if rows.is_cuda and _kernels_available():
            from tandem.engine.cuda.quant_matmul import quantized_linear

            y = quantized_linear(rows, self.quantized, gated=gated)
            return y.view(*lead, y.shape[-1])
        y = (
            self._cpu_product(rows)
            if rows.device.type == "cpu"
            else cpu.dequantized_product(rows, self.quantized)
        )
        if gated:
            from tandem.engine.ops import silu_mul

            y = silu_mul(y)
        return y.view(*lead, y.shape[-1])

    def gated(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up for a fused gate_up layer (gate outputs, then up)."""
        if self.bias is not None:
            from tandem.engine.ops import silu_mul

            return silu_mul(self(x))
        return self.product(x, gated=True)

    def _int4_product(self, rows: torch.Tensor) -> torch.Tensor:
        return cpu.int4_product(
            rows.to(self.weight_scales.dtype),
            self.weight_data,
            self.group_size,
            self.weight_scales,
            self.out_features,
        ).to(rows.dtype)

    def _cpu_product(self, rows: torch.Tensor) -> torch.Tensor:
        if self.cpu_int4:
            return self._int4_product(rows)
        weight = self.quantized
        if cpu.int8_kernel_fits(weight) and rows.shape[0] < cpu.DEQUANTIZE_ROWS:
            return cpu.int8_product(rows, weight.data, weight.scales.reshape(-1).to(rows.dtype))
        return cpu.dequantized_product(rows, weight)

    def extra_repr(self) -> str:
        return f"{self.in_features}→{self.out_features}, {self.kind}, group {self.group_size}, bias={self.bias is not None}"


def _kernels_available() -> bool:
    from tandem.engine.ops import kernels_available

    return kernels_available()


class QuantizedEmbedding(nn.Module):
    """Token rows of an int8 table with one scale per row; looked-up rows dequantize to `dtype`."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.register_parameter("weight_data", None)
        self.register_parameter("weight_scales", None)

    def set_weight(self, weight: QuantizedWeight) -> None:
        if weight.kind != "int8" or weight.group_size < weight.in_features or weight.zeros is not None:
            raise ValueError("a quantized embedding holds int8 rows with one symmetric scale each")
        self.weight_data = nn.Parameter(weight.data, requires_grad=False)
        self.weight_scales = nn.Parameter(weight.scales, requires_grad=False)

    @property
    def quantized(self) -> QuantizedWeight:
        shape = (self.num_embeddings, self.embedding_dim)
        return QuantizedWeight("int8", shape, self.weight_data, self.weight_scales, self.embedding_dim)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_data[token_ids].to(torch.float32)  # [B, T, hidden]
        return (rows * self.weight_scales[token_ids].to(torch.float32)).to(self.dtype)


def fuse_quantized(parts: list[nn.Module]) -> QuantizedLinear | None:
    """One QuantizedLinear whose outputs are the parts' outputs (q/k/v, gate/up), or None where
    the parts cannot share one weight (dense beside quantized, different schemes, scale blocks
    straddling two parts): the model then runs them one by one."""
    if not all(isinstance(p, QuantizedLinear) for p in parts):
        return None
    layers: list[QuantizedLinear] = parts  # type: ignore[assignment]
    if any(layer.cpu_int4 for layer in layers) or len({layer.bias is None for layer in layers}) > 1:
        return None
    weights = [layer.quantized for layer in layers]
    if not concatenable(weights):
        return None
    fused_weight = concatenate(weights)
    first = layers[0]
    fused = QuantizedLinear(first.in_features, fused_weight.out_features, bias=False)
    fused.set_weight(fused_weight)
    if first.bias is not None:
        fused.bias = nn.Parameter(torch.cat([layer.bias for layer in layers]), requires_grad=False)  # type: ignore[misc]
    return fused
