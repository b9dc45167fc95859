"""Readers from each checkpoint format's tensors to the engine's `QuantizedWeight` layout.

Every reader takes the module's name (`model.layers.3.mlp.down_proj`), the shape the config
implies ([out, in]) and the checkpoint, reads that module's tensors by their on-disk names and
checks their shapes against the config, so a checkpoint that does not match refuses to load.
Facts of each format (see `tandem.model.quantization` for the configs):

- FP8: `weight` F8_E4M3 [out, in], `weight_scale_inv` [ceil(out / rows), ceil(in / cols)]: the
  weight is value × scale_inv ("inverse" of the scale that quantized it).
- compressed-tensors pack-quantized: `weight_packed` int32 [out, ceil(in / (32 / bits))], each
  word holding consecutive inputs from its low bits up, stored as value + 2^(bits-1);
  `weight_scale` [out, groups]; `weight_zero_point` int32 packed the same way along the
  outputs ([ceil(out / (32 / bits)), groups]) when asymmetric; `weight_g_idx` with actorder.
  A weight is (q - zero_point) × scale, in signed values.
- AWQ (GEMM): `qweight` int32 [in, out / 8] holding outputs 8j..8j+7 of an input in the
  interleaved order 0, 2, 4, 6, 1, 3, 5, 7 from the low nibble up; `qzeros` [groups, out / 8]
  the same way; `scales` [groups, out]. A weight is (q - zero) × scale, unsigned values.
- GPTQ: `qweight` int32 [in / (32 / bits), out] holding consecutive inputs from the low bits up;
  `qzeros` [groups, out / (32 / bits)] consecutive outputs; `scales` [groups, out]; `g_idx` [in]
  (each input's group). gptq v1 checkpoints store each zero point minus one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tandem.engine.checkpoint import Checkpoint
from tandem.engine.quant.weight import ZERO_DTYPES, QuantizedWeight, pack_int4
from tandem.errors import ModelFormatError, UnsupportedModelError
from tandem.model.quantization import QuantFormat

# The tensor whose presence marks a module as quantized in each checkpoint format.
MARKERS = {
    "fp8": "weight_scale_inv",
    "compressed-tensors": "weight_packed",
    "awq": "qweight",
    "gptq": "qweight",
}
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds output 8j + AWQ_ORDER[i]
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # output 8j + c sits in nibble AWQ_REVERSE_ORDER[c]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _read(checkpoint: Checkpoint, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    tensor = checkpoint.read(name)
    if shape is not None and tuple(tensor.shape) != shape:
        raise ModelFormatError(
            f"tensor {name} has shape {tuple(tensor.shape)} in the checkpoint, but the config implies {shape}"
        )
    return tensor


def unpack_int32(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [..., words] → int32 [..., words × 32 / bits] of unsigned values, each word's
    values taken from its low bits up (consecutive positions)."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
    values = (packed.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)  # [..., words, per word]
    return values.flatten(-2)


def _held(kind: str, unsigned: torch.Tensor) -> torch.Tensor:
    """Unsigned values [out, in] as the layout holds them: packed nibbles, or int8 less 128."""
    if kind == "int4":
        return pack_int4(unsigned)
    return (unsigned.to(torch.int16) - 128).to(torch.int8)


def _held_zeros(kind: str, unsigned: torch.Tensor) -> torch.Tensor:
    if kind == "int4":
        return unsigned.to(ZERO_DTYPES["int4"])
    return (unsigned.to(torch.int16) - 128).to(ZERO_DTYPES["int8"])


def _group_order(g_idx: torch.Tensor, group_size: int, name: str) -> torch.Tensor | None:
    """None when inputs are grouped in order (g_idx = i // group_size); else the permutation
    that sorts inputs by group, which must give groups of `group_size` consecutive inputs."""
    g_idx = g_idx.to(torch.int64)
    in_features = g_idx.shape[0]
    in_order = torch.arange(in_features, device=g_idx.device) // group_size
    if torch.equal(g_idx, in_order):
        return None
    order = torch.argsort(g_idx, stable=True)
    if not torch.equal(g_idx[order], in_order):
        raise UnsupportedModelError(f"{name}: g_idx does not form groups of {group_size} inputs")
    return order


def _in_group_order(
    checkpoint: Checkpoint, g_name: str, unsigned: torch.Tensor, group: int, name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The values [out, in] with their inputs sorted by group where the checkpoint's `g_name`
    (act-order) groups them out of order, and that order (None: in order, or no `g_name`)."""
    if g_name not in checkpoint:
        return unsigned, None
    order = _group_order(_read(checkpoint, g_name, (unsigned.shape[1],)), group, name)
    return (unsigned, None) if order is None else (unsigned[:, order], order)


def read_fp8(checkpoint: Checkpoint, name: str, fmt: QuantFormat, out: int, inputs: int) -> QuantizedWeight:
    scheme = fmt.layers
    data = _read(checkpoint, f"{name}.weight", (out, inputs))
    if data.dtype != torch.float8_e4m3fn:
        raise ModelFormatError(
            f"tensor {name}.weight is {data.dtype}, but an fp8 checkpoint holds float8_e4m3fn"
        )
    scale = checkpoint.read(f"{name}.weight_scale_inv")
    if scheme.group_size is None:  # one scale per tensor
        if scale.numel() != 1:
            raise ModelFormatError(
                f"tensor {name}.weight_scale_inv should hold one scale, has {scale.numel()}"
            )
        return QuantizedWeight("fp8", (out, inputs), data, scale.reshape(1, 1).float(), inputs, out)
    rows, columns = scheme.block_rows or out, scheme.group_size
    expected = (_ceil_div(out, rows), _ceil_div(inputs, columns))
    if tuple(scale.shape) != expected:
        raise ModelFormatError(
            f"tensor {name}.weight_scale_inv has shape {tuple(scale.shape)}, but blocks of "
            f"{rows}×{columns} over {out}×{inputs} need {expected}"
        )
    return QuantizedWeight("fp8", (out, inputs), data, scale.float(), columns, rows)


def read_compressed_tensors(
    checkpoint: Checkpoint, name: str, fmt: QuantFormat, out: int, inputs: int
) -> QuantizedWeight:
    scheme = fmt.layers
    bits, per_word = scheme.bits, 32 // scheme.bits
    shape_name = f"{name}.weight_shape"
    if shape_name in checkpoint:
        stored = tuple(int(v) for v in checkpoint.read(shape_name).tolist())
        if stored != (out, inputs):
            raise ModelFormatError(
                f"tensor {shape_name} says {stored}, but the config implies {(out, inputs)}"
            )
    packed = _read(checkpoint, f"{name}.weight_packed", (out, _ceil_div(inputs, per_word)))
    unsigned = unpack_int32(packed, bits)[:, :inputs]  # value + 2^(bits-1)
    group = scheme.group_size or inputs
    groups = _ceil_div(inputs, group)
    scales = _read(checkpoint, f"{name}.weight_scale", (out, groups))
    zeros = None
    zero_name = f"{name}.weight_zero_point"
    if not scheme.symmetric:
        packed_zeros = _read(checkpoint, zero_name, (_ceil_div(out, per_word), groups))
        zeros = _held_zeros(scheme.kind, unpack_int32(packed_zeros.T, bits)[:, :out].T)
    unsigned, order = _in_group_order(checkpoint, f"{name}.weight_g_idx", unsigned, group, name)
    return QuantizedWeight(
        scheme.kind,
        (out, inputs),
        _held(scheme.kind, unsigned),
        scales,
        group,
        zeros=zeros,
        input_order=order,
    )


def read_awq(checkpoint: Checkpoint, name: str, fmt: QuantFormat, out: int, inputs: int) -> QuantizedWeight:
    group = fmt.layers.group_size or inputs
    groups = _ceil_div(inputs, group)
    if out % 8:
        raise ModelFormatError(f"{name}: AWQ packs 8 outputs a word, but the layer has {out}")
    reorder = torch.tensor(AWQ_REVERSE_ORDER)

    def logical(packed: torch.Tensor) -> torch.Tensor:  # [rows, out / 8] → [rows, out], output order
        values = unpack_int32(packed, 4).view(packed.shape[0], out // 8, 8)
        return values[..., reorder].reshape(packed.shape[0], out)

    qweight = logical(_read(checkpoint, f"{name}.qweight", (inputs, out // 8)))  # [in, out]
    zeros = logical(_read(checkpoint, f"{name}.qzeros", (groups, out // 8)))  # [groups, out]
    scales = _read(checkpoint, f"{name}.scales", (groups, out))
    return QuantizedWeight(
        "int4",
        (out, inputs),
        pack_int4(qweight.T),
        scales.T.contiguous(),
        group,
        zeros=_held_zeros("int4", zeros.T),
    )


def read_gptq(checkpoint: Checkpoint, name: str, fmt: QuantFormat, out: int, inputs: int) -> QuantizedWeight:
    scheme = fmt.layers
    bits, per_word = scheme.bits, 32 // scheme.bits
    group = scheme.group_size or inputs
    groups = _ceil_div(inputs, group)
    if inputs % per_word or out % per_word:
        raise ModelFormatError(
            f"{name}: GPTQ packs {per_word} values a word, but the layer is {out}×{inputs}"
        )
    qweight = _read(checkpoint, f"{name}.qweight", (inputs // per_word, out))
    unsigned = unpack_int32(qweight.T, bits)  # [out, in]
    packed_zeros = _read(checkpoint, f"{name}.qzeros", (groups, out // per_word))
    zeros = unpack_int32(packed_zeros, bits).T.to(torch.int16)  # [out, groups]
    if fmt.checkpoint_format == "gptq":
        zeros = zeros + 1  # gptq v1 stored zero - 1
    scales = _read(checkpoint, f"{name}.scales", (groups, out)).T.contiguous()
    unsigned, order = _in_group_order(checkpoint, f"{name}.g_idx", unsigned, group, name)
    return QuantizedWeight(
        scheme.kind,
        (out, inputs),
        _held(scheme.kind, unsigned),
        scales,
        group,
        zeros=_held_zeros(scheme.kind, zeros),
        input_order=order,
    )


READERS: dict[str, Callable[[Checkpoint, str, QuantFormat, int, int], QuantizedWeight]] = {
    "fp8": read_fp8,
    "compressed-tensors": read_compressed_tensors,
    "awq": read_awq,
    "gptq": read_gptq,
}


def stored_shape(checkpoint: Checkpoint, name: str, fmt: QuantFormat) -> tuple[int, int]:
    """[out, in] of module `name`'s weight as the checkpoint stores it (before any split)."""
    if fmt.method == "fp8":
        out, inputs = checkpoint.shape(f"{name}.weight")
    elif fmt.method == "compressed-tensors":
        shape_name = f"{name}.weight_shape"
        if shape_name in checkpoint:
            out, inputs = (int(v) for v in checkpoint.read(shape_name).tolist())
        else:
            out, words = checkpoint.shape(f"{name}.weight_packed")
            inputs = words * (32 // fmt.layers.bits)
    elif fmt.method == "awq":
        inputs, words = checkpoint.shape(f"{name}.qweight")
        out = words * 8
    else:
        words, out = checkpoint.shape(f"{name}.qweight")
        inputs = words * (32 // fmt.layers.bits)
    return int(out), int(inputs)


def is_quantized_in(checkpoint: Checkpoint, name: str, fmt: QuantFormat) -> bool:
    """Whether module `name` is stored quantized in this checkpoint (its format's marker tensor)."""
    return f"{name}.{MARKERS[fmt.method]}" in checkpoint


def read_quantized(
    checkpoint: Checkpoint, name: str, fmt: QuantFormat, out: int, inputs: int
) -> QuantizedWeight:
    """Module `name`'s weight [out, in] from a checkpoint stored in `fmt`."""
    return READERS[fmt.method](checkpoint, name, fmt, out, inputs)
