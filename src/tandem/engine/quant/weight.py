"""`QuantizedWeight`: one quantized matrix [out, in], or a stack of them [*, out, in] (the experts
of a mixture-of-experts layer), in the one layout every kernel of the engine reads.

Whatever the checkpoint's format (FP8 blocks, compressed-tensors, AWQ, GPTQ) or load-time
quantization, the readers produce this layout:

- int4: `data` uint8 [*, out, ceil(in / 2)], two inputs a byte, the even input in the low
  nibble; values 0..15. A weight is (q - zero) × scale, the zero point 8 when there are none.
- int8: `data` int8 [*, out, in], values -128..127; the zero point 0 when there are none.
- fp8: `data` float8_e4m3fn [*, out, in]; a weight is value × scale (no zero points).

`scales` [*, ceil(out / block_rows), ceil(in / group_size)]: one per block of `block_rows`
outputs × `group_size` inputs (integer formats have block_rows 1; one scale per row has
group_size = in; FP8 with one scale per tensor has block_rows = out and group_size = in).
`zeros` [*, out, ceil(in / group_size)]: integer zero points (uint8 for int4, int16 for int8).
`input_order` [in]: where the checkpoint grouped its inputs in a permuted order (GPTQ act-order),
the columns are held in that order and a product multiplies x[..., input_order].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from tandem.errors import UnsupportedModelError

KINDS = ("int4", "int8", "fp8")
IMPLICIT_ZERO = {"int4": 8, "int8": 0, "fp8": 0}
DATA_DTYPES = {"int4": torch.uint8, "int8": torch.int8, "fp8": torch.float8_e4m3fn}
ZERO_DTYPES = {"int4": torch.uint8, "int8": torch.int16}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """[..., in] of 0..15 → uint8 [..., ceil(in / 2)], the even input in the low nibble."""
    if values.shape[-1] % 2:
        values = torch.nn.functional.pad(values, (0, 1))
    values = values.to(torch.uint8)
    return values[..., 0::2] | (values[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """The inverse of `pack_int4`: uint8 [..., ceil(in / 2)] → uint8 [..., in] of 0..15."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)[..., :in_features]


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A quantized matrix (or stack of matrices) in the engine's layout (see the module doc)."""

    kind: str
    shape: tuple[int, ...]  # logical [*, out, in]
    data: torch.Tensor
    scales: torch.Tensor
    group_size: int
    block_rows: int = 1
    zeros: torch.Tensor | None = None
    input_order: torch.Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.kind not in KINDS:
            raise ValueError(f"unknown quantized kind {self.kind!r}")
        *lead, out, inputs = self.shape
        data_in = _ceil_div(inputs, 2) if self.kind == "int4" else inputs
        expected = {
            "data": (tuple(self.data.shape), (*lead, out, data_in)),
            "scales": (
                tuple(self.scales.shape),
                (*lead, _ceil_div(out, self.block_rows), _ceil_div(inputs, self.group_size)),
            ),
        }
        if self.zeros is not None:
            expected["zeros"] = (tuple(self.zeros.shape), (*lead, out, _ceil_div(inputs, self.group_size)))
        for name, (actual, wanted) in expected.items():
            if actual != wanted:
                raise ValueError(
                    f"{self.kind} weight of shape {self.shape}: {name} is {actual}, not {wanted}"
                )
        if self.data.dtype != DATA_DTYPES[self.kind]:
            raise ValueError(f"{self.kind} data must be {DATA_DTYPES[self.kind]}, got {self.data.dtype}")
        if self.zeros is not None and self.kind == "fp8":
            raise ValueError("fp8 weights have no zero points")
        if self.input_order is not None and tuple(self.input_order.shape) != (inputs,):
            raise ValueError(f"input_order must list the {inputs} inputs")

    # --- what it is --------------------------------------------------------------------------

    @property
    def out_features(self) -> int:
        return self.shape[-2]

    @property
    def in_features(self) -> int:
        return self.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors held, by role (what a module registers)."""
        held = {"data": self.data, "scales": self.scales}
        if self.zeros is not None:
            held["zeros"] = self.zeros
        if self.input_order is not None:
            held["input_order"] = self.input_order
        return held

    def bytes(self) -> int:
        """Bytes held: data, scales, zero points and the input order."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    # --- values ------------------------------------------------------------------------------

    def values(self) -> torch.Tensor:
        """The stored integers (int16 [*, out, in], in the held input order) or FP8 values as float32."""
        if self.kind == "int4":
            return unpack_int4(self.data, self.in_features).to(torch.int16)
        if self.kind == "int8":
            return self.data.to(torch.int16)
        return self.data.to(torch.float32)

    def expanded_scales(self) -> torch.Tensor:
        """float32 [*, out, in]: the scale of every weight (held input order)."""
        scales = self.scales.to(torch.float32)
        scales = scales.repeat_interleave(self.block_rows, dim=-2)[..., : self.out_features, :]
        return scales.repeat_interleave(self.group_size, dim=-1)[..., : self.in_features]

    def expanded_zeros(self) -> torch.Tensor | None:
        """float32 [*, out, in] zero points, or None where they are implicit."""
        if self.zeros is None:
            return None
        zeros = self.zeros.to(torch.float32).repeat_interleave(self.group_size, dim=-1)
        return zeros[..., : self.in_features]

    def dequantize(self, dtype: torch.dtype = torch.float32, held_order: bool = False) -> torch.Tensor:
        """The weights [*, out, in], computed in float32: in the logical input order, or with
        `held_order` in the order the columns are held (what x[..., input_order] multiplies)."""
        values = self.values().to(torch.float32)
        zeros = self.expanded_zeros()
        if zeros is not None:
            values = values - zeros
        elif IMPLICIT_ZERO[self.kind]:
            values = values - IMPLICIT_ZERO[self.kind]
        weight = values * self.expanded_scales()
        if self.input_order is not None and not held_order:  # held column j is input input_order[j]
            logical = torch.empty_like(weight)
            logical[..., self.input_order] = weight
            weight = logical
        return weight.to(dtype)

    # --- moving and reshaping ----------------------------------------------------------------

    def to(self, device: torch.device | str, scale_dtype: torch.dtype | None = None) -> QuantizedWeight:
        """On `device`, scales optionally cast (integer formats keep scales in the activation dtype)."""
        moved = {name: tensor.to(device) for name, tensor in self.tensors().items()}
        if scale_dtype is not None and self.kind != "fp8":
            moved["scales"] = moved["scales"].to(scale_dtype)
        return replace(self, **moved)

    def with_row_scales(self) -> QuantizedWeight:
        """The same weight with its scales repeated for every output row (block_rows 1): FP8
        blocks cut or joined off their boundaries (a few percent more scale bytes)."""
        if self.block_rows == 1:
            return self
        scales = self.scales.repeat_interleave(self.block_rows, dim=-2)[..., : self.out_features, :]
        return replace(self, scales=scales.contiguous(), block_rows=1)

    def rows(self, rows: slice | tuple[slice, ...]) -> QuantizedWeight:
        """The weight of outputs `rows` (several row blocks are concatenated): a
        column-parallel shard. A cut inside an FP8 block gives each row its block's scale."""
        if isinstance(rows, tuple):
            return concatenate([self.rows(block) for block in rows])
        start, stop, _ = rows.indices(self.out_features)
        if start % self.block_rows or (stop % self.block_rows and stop != self.out_features):
            return self.with_row_scales().rows(slice(start, stop))
        scale_rows = slice(start // self.block_rows, _ceil_div(stop, self.block_rows))
        return replace(
            self,
            shape=(*self.shape[:-2], stop - start, self.in_features),
            data=self.data[..., start:stop, :],
            scales=self.scales[..., scale_rows, :],
            zeros=None if self.zeros is None else self.zeros[..., start:stop, :],
        )

    def columns(self, columns: slice) -> QuantizedWeight:
        """The weight of inputs `columns`: a row-parallel shard. The block must start on a
        group of inputs (any start when one scale covers a whole row)."""
        start, stop, _ = columns.indices(self.in_features)
        if (start, stop) == (0, self.in_features):
            return self
        if self.input_order is not None:
            raise UnsupportedModelError(
                "cannot split the inputs of a weight quantized in activation order (GPTQ desc_act) "
                "over tensor-parallel ranks"
            )
        whole_rows = self.group_size >= self.in_features
        if not whole_rows and (
            start % self.group_size or (stop % self.group_size and stop != self.in_features)
        ):
            raise UnsupportedModelError(
                f"cannot split a {self.kind} weight at input {start}:{stop}: its scales cover "
                f"groups of {self.group_size} inputs"
            )
        if self.kind == "int4" and start % 2:
            raise UnsupportedModelError(f"cannot split an int4 weight at the odd input {start}")
        groups = (
            slice(0, 1) if whole_rows else slice(start // self.group_size, _ceil_div(stop, self.group_size))
        )
        data_columns = slice(start // 2, _ceil_div(stop, 2)) if self.kind == "int4" else slice(start, stop)
        return replace(
            self,
            shape=(*self.shape[:-1], stop - start),
            data=self.data[..., data_columns],
            scales=self.scales[..., groups],
            zeros=None if self.zeros is None else self.zeros[..., groups],
            group_size=stop - start if whole_rows else self.group_size,
        )

    def expert(self, index: int) -> QuantizedWeight:
        """One matrix of a stacked bank [E, out, in]."""
        if len(self.shape) < 3:
            raise ValueError("expert() takes one matrix of a stacked bank")
        return replace(
            self,
            shape=self.shape[1:],
            data=self.data[index],
            scales=self.scales[index],
            zeros=None if self.zeros is None else self.zeros[index],
        )

    def contiguous(self) -> QuantizedWeight:
        return replace(self, **{name: t.contiguous() for name, t in self.tensors().items()})


def _materialized_zeros(weight: QuantizedWeight) -> torch.Tensor:
    if weight.zeros is not None:
        return weight.zeros
    groups = _ceil_div(weight.in_features, weight.group_size)
    shape = (*weight.shape[:-2], weight.out_features, groups)
    return torch.full(shape, IMPLICIT_ZERO[weight.kind], dtype=ZERO_DTYPES[weight.kind], device=weight.device)


def concatenable(parts: Sequence[QuantizedWeight]) -> bool:
    """Whether `concatenate` can join these weights along their outputs."""
    first = parts[0]
    return all(
        p.kind == first.kind
        and p.shape[:-2] == first.shape[:-2]
        and p.in_features == first.in_features
        and p.group_size == first.group_size
        and p.scales.dtype == first.scales.dtype
        and (
            (p.input_order is None and first.input_order is None)
            or (
                p.input_order is not None
                and first.input_order is not None
                and torch.equal(p.input_order, first.input_order)
            )
        )
        for p in parts
    )


def concatenate(parts: Sequence[QuantizedWeight]) -> QuantizedWeight:
    """One weight whose outputs are the parts' outputs in order (fused q/k/v or gate/up). FP8
    parts whose blocks differ or would straddle two parts get a scale per row first."""
    if not concatenable(parts):
        raise ValueError("these quantized weights cannot be joined along their outputs")
    rows = parts[0].block_rows
    if any(p.block_rows != rows for p in parts) or any(p.out_features % rows for p in parts[:-1]):
        parts = [p.with_row_scales() for p in parts]
    first = parts[0]
    zeros = None
    if any(p.zeros is not None for p in parts):
        zeros = torch.cat([_materialized_zeros(p) for p in parts], dim=-2)
    return replace(
        first,
        shape=(*first.shape[:-2], sum(p.out_features for p in parts), first.in_features),
        data=torch.cat([p.data for p in parts], dim=-2),
        scales=torch.cat([p.scales for p in parts], dim=-2),
        zeros=zeros,
    )


def stack(parts: Sequence[QuantizedWeight]) -> QuantizedWeight:
    """A bank [E, *, out, in] of equally shaped weights (the experts of a layer)."""
    first = parts[0]
    if not all(
        p.shape == first.shape and p.kind == first.kind and p.group_size == first.group_size for p in parts
    ):
        raise ValueError("only weights of one shape and format stack")
    if any(p.input_order is not None for p in parts):
        raise UnsupportedModelError("experts quantized in activation order (GPTQ desc_act) are not supported")
    zeros = None
    if any(p.zeros is not None for p in parts):
        zeros = torch.stack([_materialized_zeros(p) for p in parts])
    return replace(
        first,
        shape=(len(parts), *first.shape),
        data=torch.stack([p.data for p in parts]),
        scales=torch.stack([p.scales for p in parts]),
        zeros=zeros,
    )
