"""Quantized weight formats: what a checkpoint's `quantization_config` says, as one frozen value.

Pure Python (no torch): placement counts a quantized model's bytes through this module, and the
engine's readers (`tandem.engine.quant`) take their scheme from it. Unsupported configurations
are refused here, with one line naming the field and what is supported, so a checkpoint Tandem
cannot run correctly never loads.

Formats read from checkpoints:
- `fp8`: block-scaled FP8 e4m3 (DeepSeek-V3, Kimi-K2): `weight` in F8_E4M3 and a float32
  `weight_scale_inv` per block of `weight_block_size` ([rows, columns]) or one per tensor.
- `compressed-tensors` `pack-quantized`: int4 or int8 packed into int32 along the inputs
  (`weight_packed`), `weight_scale` per group or per output channel, a packed
  `weight_zero_point` when asymmetric, and `weight_shape`.
- `awq` (GEMM layout): int4 `qweight`/`qzeros` packed along the outputs in AWQ's interleaved
  order, `scales` per group of inputs.
- `gptq`: int4 or int8 `qweight` packed along the inputs, `qzeros` along the outputs (gptq v1
  checkpoints store each zero point minus one), `scales`, and `g_idx` (the group of each input;
  with `desc_act` the groups are not contiguous).

Load-time quantization (`--quantize int8|int4`) is described by the same value: see
`load_time_format`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from tandem.errors import InvalidRequestError, UnsupportedModelError

WeightKind = Literal["int4", "int8", "fp8"]
QUANTIZE_CHOICES = ("int8", "int4")
# Load-time int4 takes one scale (and zero point) per this many inputs; a layer whose input size
# it does not divide takes the largest of the smaller sizes that does (`group_size_for`).
LOAD_TIME_INT4_GROUP = 128
LOAD_TIME_INT4_GROUPS = (128, 64, 32)

SUPPORTED_METHODS = ("fp8", "compressed-tensors", "awq", "gptq")


@dataclass(frozen=True)
class WeightScheme:
    """How one quantized matrix [out, in] is stored: `kind` values, one scale per `block_rows`
    outputs × `group_size` inputs (None: a whole row of inputs), integer zero points unless
    `symmetric`. `scale_bytes` is the size of one scale as held."""

    kind: WeightKind
    group_size: int | None = None
    block_rows: int | None = 1  # None: every row (FP8 with one scale per tensor)
    symmetric: bool = True
    scale_bytes: int = 2

    @property
    def bits(self) -> int:
        return 4 if self.kind == "int4" else 8

    def bytes_per_parameter(self, in_features: int) -> float:
        """Bytes one weight takes, its share of the scales and zero points included."""
        if self.block_rows is None:
            return self.bits / 8  # one scale for the whole matrix
        group = self.group_size or in_features
        per_scale = self.scale_bytes + (0 if self.symmetric else 1)
        return self.bits / 8 + per_scale / (group * self.block_rows)

    @property
    def label(self) -> str:
        if self.kind == "fp8":
            if self.group_size is None:
                return "fp8 e4m3 (one scale per tensor)"
            return f"fp8 e4m3 (blocks of {self.block_rows}×{self.group_size})"
        grouping = f"groups of {self.group_size}" if self.group_size else "per channel"
        return f"{self.kind} ({grouping}, {'symmetric' if self.symmetric else 'asymmetric'})"


@dataclass(frozen=True)
class QuantFormat:
    """The quantized weights of a checkpoint (or asked for at load time).

    `layers` is the scheme of the decoder layers' linear projections; `head` and `embedding`
    that of the output projection and the token embedding (None: kept in 16 bits). Modules
    matching `excluded` stay in 16 bits (names, prefixes up to a module boundary, suffixes, or
    regular expressions, as `transformers` matches `modules_to_not_convert`; compressed-tensors'
    `re:` patterns too); with `targets` (compressed-tensors `re:` patterns) only the modules
    matching one are quantized. `act_order`: inputs are grouped in a permuted order (GPTQ
    `desc_act`, compressed-tensors `actorder: group`).
    """

    method: str  # one of SUPPORTED_METHODS, or "load-time"
    layers: WeightScheme
    head: WeightScheme | None = None
    embedding: WeightScheme | None = None
    excluded: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    act_order: bool = False
    checkpoint_format: str = ""  # "gptq" (v1) / "gptq_v2", "gemm", "pack-quantized", ...

    @property
    def is_load_time(self) -> bool:
        return self.method == "load-time"

    def quantizes(self, module: str) -> bool:
        """Whether the decoder-layer linear `module` (a full name) is quantized."""
        if self.targets and not any(_pattern_matches(target, module) for target in self.targets):
            return False
        return not any(_pattern_matches(pattern, module) for pattern in self.excluded)

    @property
    def label(self) -> str:
        """One line for plans and logs: "int4 (groups of 128, asymmetric), AWQ"."""
        source = {
            "load-time": "quantized at load",
            "fp8": "FP8 checkpoint",
            "compressed-tensors": "compressed-tensors",
            "awq": "AWQ",
            "gptq": "GPTQ",
        }[self.method]
        ends = ""
        if self.head is not None and self.head != self.layers:
            ends = f"; head {self.head.kind}"
        return f"{self.layers.label}, {source}{ends}"


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    try:
        if re.match(rf"(?:{pattern}){boundary}", name):
            return True
    except re.error:
        pass
    return name == pattern or name.endswith("." + pattern) or name.endswith(pattern)


def group_size_for(in_features: int, preferred: int = LOAD_TIME_INT4_GROUP) -> int:
    """The load-time int4 group size for a layer with `in_features` inputs: `preferred` when it
    divides them, else the largest smaller choice that does."""
    for size in (preferred, *(s for s in LOAD_TIME_INT4_GROUPS if s < preferred)):
        if in_features % size == 0:
            return size
    raise UnsupportedModelError(
        f"--quantize int4 needs layers whose input size is a multiple of {LOAD_TIME_INT4_GROUPS[-1]}; "
        f"one has {in_features}"
    )


def load_time_format(name: str) -> QuantFormat:
    """`--quantize int8`: every linear projection int8, one symmetric scale per output channel
    (what torch's `_weight_int8pack_mm` takes). `--quantize int4`: decoder projections int4 in
    asymmetric groups of 128 inputs (what `_weight_int4pack_mm_for_cpu` takes). In both the
    embedding and the output projection are int8 per row: they are a large share of a small
    model, and 8 bits keep the logits close."""
    if name not in QUANTIZE_CHOICES:
        raise InvalidRequestError(f"unsupported quantize {name!r}; supported: {', '.join(QUANTIZE_CHOICES)}")
    ends = WeightScheme("int8", None, symmetric=True)
    layers = ends if name == "int8" else WeightScheme("int4", LOAD_TIME_INT4_GROUP, symmetric=False)
    return QuantFormat("load-time", layers, head=ends, embedding=ends)


def loaded_format(stored: QuantFormat | None, quantize: str | None) -> QuantFormat | None:
    """The weights a model loads with: its checkpoint's own format (`stored`), or `quantize`
    (int8, int4) applied at load to a checkpoint that is not quantized."""
    if quantize is None:
        return stored
    if stored is not None:
        raise InvalidRequestError(
            f"--quantize {quantize}: this checkpoint is already quantized ({stored.label}); "
            "--quantize applies to 16- and 32-bit checkpoints"
        )
    return load_time_format(quantize)


def _refuse(method: str, field: str, value: Any, supported: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"unsupported quantization_config ({method}): {field} {value!r}; supported: {supported}"
    )


def parse_quantization(raw: dict[str, Any]) -> QuantFormat | None:
    """The format of a Hugging Face `config.json` dictionary's `quantization_config`, or None
    for unquantized checkpoints; refuses (UnsupportedModelError) what Tandem cannot run."""
    config = raw.get("quantization_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise UnsupportedModelError("unsupported quantization_config: it is not a JSON object")
    method = config.get("quant_method")
    if method is None and isinstance(raw.get("quantization"), dict):
        return None  # MLX's affine format (mlx-lm writes it under both keys): engine/affine.py
    parser = _PARSERS.get(method) if isinstance(method, str) else None
    if parser is None:
        raise _refuse(str(method), "quant_method", method, ", ".join(SUPPORTED_METHODS))
    return parser(config)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _parse_fp8(config: dict[str, Any]) -> QuantFormat:
    fmt = config.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise _refuse("fp8", "fmt", fmt, "'e4m3'")
    activation = config.get("activation_scheme", "dynamic")
    if activation != "dynamic":
        raise _refuse("fp8", "activation_scheme", activation, "'dynamic' (no static activation scales)")
    block = config.get("weight_block_size")
    if block is None:
        scheme = WeightScheme("fp8", None, block_rows=None, scale_bytes=4)
    else:
        if not (isinstance(block, list | tuple) and len(block) == 2 and all(int(b) > 0 for b in block)):
            raise _refuse("fp8", "weight_block_size", block, "[rows, columns] of positive sizes")
        scheme = WeightScheme("fp8", int(block[1]), block_rows=int(block[0]), scale_bytes=4)
    excluded = (*_strings(config.get("modules_to_not_convert")), "lm_head")
    return QuantFormat("fp8", scheme, excluded=excluded, checkpoint_format="fp8")


def _parse_compressed_tensors(config: dict[str, Any]) -> QuantFormat:
    method = "compressed-tensors"
    status = config.get("quantization_status", "compressed")
    if status != "compressed":
        raise _refuse(method, "quantization_status", status, "'compressed'")
    if config.get("sparsity_config"):
        raise _refuse(method, "sparsity_config", "set", "none")
    if config.get("kv_cache_scheme"):
        raise _refuse(method, "kv_cache_scheme", "set", "none (the cache stays 16-bit)")
    top_format = config.get("format", "pack-quantized")
    groups = config.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise _refuse(method, "config_groups", groups, "one group of weight-only int4/int8 schemes")
    schemes, targets = set(), []
    for name, group in groups.items():
        fmt = group.get("format") or top_format
        if fmt != "pack-quantized":
            raise _refuse(method, "format", fmt, "'pack-quantized'")
        for side in ("input_activations", "output_activations"):
            if group.get(side):
                raise _refuse(method, f"config_groups.{name}.{side}", "set", "none (weight-only)")
        weights = group.get("weights") or {}
        schemes.add(_compressed_tensors_scheme(name, weights))
        targets.extend(_strings(group.get("targets")))
    if len(schemes) > 1:
        raise _refuse(method, "config_groups", "several weight schemes", "one scheme for every layer")
    if any(target != "Linear" and not target.startswith("re:") for target in targets):
        raise _refuse(method, "targets", targets, "'Linear' or re: patterns")
    (scheme,) = schemes
    act_order = any(
        (g.get("weights") or {}).get("actorder") in ("group", "dynamic", True) for g in groups.values()
    )
    fmt = QuantFormat(
        method,
        scheme,
        excluded=_strings(config.get("ignore")),
        targets=() if "Linear" in targets else tuple(targets),
        act_order=act_order,
        checkpoint_format="pack-quantized",
    )
    if fmt.quantizes("lm_head"):
        fmt = replace(fmt, head=scheme)
    return fmt


def _compressed_tensors_scheme(group: str, weights: dict[str, Any]) -> WeightScheme:
    method, prefix = "compressed-tensors", f"config_groups.{group}.weights"
    kind, bits = weights.get("type", "int"), weights.get("num_bits")
    if kind != "int":
        raise _refuse(method, f"{prefix}.type", kind, "'int'")
    if bits not in (4, 8):
        raise _refuse(method, f"{prefix}.num_bits", bits, "4, 8")
    if weights.get("dynamic"):
        raise _refuse(method, f"{prefix}.dynamic", True, "false")
    strategy = weights.get("strategy")
    if strategy == "group":
        size = weights.get("group_size")
        if not isinstance(size, int) or size <= 0:
            raise _refuse(method, f"{prefix}.group_size", size, "a positive size")
        group_size: int | None = size
    elif strategy == "channel":
        group_size = None
    else:
        raise _refuse(method, f"{prefix}.strategy", strategy, "'group', 'channel'")
    actorder = weights.get("actorder")
    if actorder not in (None, False, "weight", "group", "dynamic", True):
        raise _refuse(method, f"{prefix}.actorder", actorder, "none, 'weight', 'group'")
    return WeightScheme(
        "int4" if bits == 4 else "int8", group_size, symmetric=bool(weights.get("symmetric", True))
    )


def _positive_group(method: str, config: dict[str, Any]) -> int | None:
    size = config.get("group_size", 128)
    if size == -1:
        return None
    if not isinstance(size, int) or size <= 0:
        raise _refuse(method, "group_size", size, "-1 (per channel) or a positive size")
    return size


def _parse_awq(config: dict[str, Any]) -> QuantFormat:
    version = str(config.get("version") or config.get("format") or "gemm").lower()
    if version != "gemm":
        raise _refuse("awq", "version", version, "'gemm'")
    bits = config.get("bits", config.get("w_bit", 4))
    if bits != 4:
        raise _refuse("awq", "bits", bits, "4")
    if not config.get("zero_point", True):
        raise _refuse("awq", "zero_point", False, "true")
    group = _positive_group("awq", config)
    scheme = WeightScheme("int4", group, symmetric=False)
    excluded = (*_strings(config.get("modules_to_not_convert")), "lm_head")
    return QuantFormat("awq", scheme, excluded=excluded, checkpoint_format="gemm")


def _parse_gptq(config: dict[str, Any]) -> QuantFormat:
    bits = config.get("bits", 4)
    if bits not in (4, 8):
        raise _refuse("gptq", "bits", bits, "4, 8")
    checkpoint_format = str(config.get("checkpoint_format") or config.get("format") or "gptq").lower()
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise _refuse("gptq", "checkpoint_format", checkpoint_format, "'gptq', 'gptq_v2'")
    if config.get("dynamic"):
        raise _refuse("gptq", "dynamic", "per-module overrides", "none")
    group = _positive_group("gptq", config)
    # GPTQ stores zero points whether or not the scheme is symmetric; the reader uses them.
    scheme = WeightScheme("int4" if bits == 4 else "int8", group, symmetric=False)
    head = scheme if config.get("lm_head") else None
    excluded = _strings(config.get("modules_to_not_convert"))
    return QuantFormat(
        "gptq",
        scheme,
        head=head,
        excluded=excluded if head else (*excluded, "lm_head"),
        act_order=bool(config.get("desc_act", False)),
        checkpoint_format=checkpoint_format,
    )


_PARSERS = {
    "fp8": _parse_fp8,
    "compressed-tensors": _parse_compressed_tensors,
    "awq": _parse_awq,
    "gptq": _parse_gptq,
}
