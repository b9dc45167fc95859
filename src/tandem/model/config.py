"""Model configuration read from a Hugging Face `config.json`, as one frozen value.

Pure Python (no torch): placement and the catalog read model shapes through this module on
machines and in processes that never load a tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.errors import InvalidRequestError, ModelFormatError, UnsupportedModelError
from tandem.model.moe_config import (
    MLAConfig,
    MoEConfig,
    deepseek_moe,
    gpt_oss_moe,
    latent_attention,
    mixtral_moe,
    qwen3_moe,
    yarn_mscale,
)
from tandem.model.quantization import QuantFormat, parse_quantization

SUPPORTED_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "mixtral",
    "qwen3_moe",
    "deepseek_v3",
    "kimi_k2",
    "gpt_oss",
)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_MAX_CONTEXT = 4096  # tokens allocated per sequence when nobody asks for a size


def context_size(requested: int | None, model_limit: int) -> int:
    """The context to allocate: what was asked, else the model's limit capped at the default."""
    if requested is None:
        return min(model_limit, DEFAULT_MAX_CONTEXT)
    if not 1 < requested <= model_limit:
        raise InvalidRequestError(f"context must be between 2 and the model's limit of {model_limit} tokens")
    return requested


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding parameters (`rope_parameters` or the older `rope_scaling`)."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    # YaRN (`rope_type` "yarn"): the ramp between interpolated and extrapolated frequencies, and
    # the attention temperature (given as `attention_factor`, or derived from the mscales).
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    @property
    def cos_sin_scale(self) -> float:
        """What cos and sin are multiplied by (YaRN's attention factor; 1 for the other types)."""
        if self.rope_type != "yarn":
            return 1.0
        if self.attention_factor is not None:
            return self.attention_factor
        if self.mscale and self.mscale_all_dim:
            return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor, self.mscale_all_dim)
        return yarn_mscale(self.factor)


@dataclass(frozen=True)
class ModelConfig:
    """The shape and options of a decoder-only transformer: the dense families (Llama, Mistral,
    Qwen2, Qwen3), and with `moe` and `mla` the mixture-of-experts ones (Mixtral, Qwen3-MoE,
    gpt-oss, DeepSeek-V3 and Kimi-K2, whose attention is latent)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    attention_sinks: bool = False  # gpt-oss: one learned logit per head that takes softmax mass
    sliding_window: int | None = None
    # One flag per layer: whether that layer attends only within `sliding_window`.
    sliding_layers: tuple[bool, ...] = field(default=())
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    checkpoint_dtype: str = "float32"
    moe: MoEConfig | None = None  # sparse feed-forward blocks (None: every layer dense)
    mla: MLAConfig | None = None  # latent attention (None: grouped-query attention)
    # The checkpoint's quantized weights (its `quantization_config`); None: plain 16/32-bit.
    quantization: QuantFormat | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.num_layers > 0, "num_hidden_layers must be positive"),
            (self.num_attention_heads > 0 and self.num_kv_heads > 0, "head counts must be positive"),
            (
                self.num_attention_heads % self.num_kv_heads == 0,
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})",
            ),
            (self.head_dim % 2 == 0, f"head_dim ({self.head_dim}) must be even for rotary embeddings"),
            (len(self.sliding_layers) == self.num_layers, "sliding_layers needs one flag per layer"),
            (
                self.moe is None or len(self.moe.sparse_layers) == self.num_layers,
                "sparse_layers needs one flag per layer",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelFormatError(f"invalid model config: {message}")

    @property
    def num_kv_groups(self) -> int:
        return self.num_attention_heads // self.num_kv_heads

    def layer_sliding_window(self, layer_index: int) -> int | None:
        """The attention window of one layer, or None when it attends to the whole context."""
        return self.sliding_window if self.sliding_layers[layer_index] else None

    def is_sparse_layer(self, layer_index: int) -> bool:
        """Whether layer `layer_index`'s feed-forward is a mixture of experts."""
        return self.moe is not None and self.moe.sparse_layers[layer_index]

    # Parameter counts, used by placement to size stages without loading anything.
    def attention_parameter_count(self) -> int:
        if self.mla is not None:
            return self.mla.parameter_count(self.hidden_size, self.num_attention_heads)
        hidden, head_dim = self.hidden_size, self.head_dim
        q_out, kv_out = self.num_attention_heads * head_dim, self.num_kv_heads * head_dim
        attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
        if self.qkv_bias:
            attention += q_out + 2 * kv_out
        if self.o_bias:
            attention += hidden
        if self.qk_norm:
            attention += 2 * head_dim
        if self.attention_sinks:
            attention += self.num_attention_heads
        return attention

    def dense_mlp_parameter_count(self) -> int:
        mlp = 3 * self.hidden_size * self.intermediate_size
        if self.mlp_bias:
            mlp += 2 * self.intermediate_size + self.hidden_size
        return mlp

    def layer_parameter_count(self, layer_index: int | None = None) -> int:
        """Parameters of one decoder layer (attention, feed-forward, two norms). `layer_index` may
        be left out only where every layer is alike (a dense model)."""
        return self._layer_count(layer_index, read=False)

    def layer_parameters_read(self, layer_index: int | None = None) -> int:
        """What one decoded token reads of a layer: everything of a dense layer; of a sparse one
        the router, the shared experts and its top-k experts."""
        return self._layer_count(layer_index, read=True)

    def _layer_count(self, layer_index: int | None, read: bool) -> int:
        if layer_index is None:
            if self.moe is not None and len(set(self.moe.sparse_layers)) > 1:
                raise ValueError("this model's layers differ in size: name the layer to count")
            layer_index = 0
        if self.is_sparse_layer(layer_index):
            assert self.moe is not None
            feed_forward = (
                self.moe.parameters_read(self.hidden_size)
                if read
                else self.moe.parameter_count(self.hidden_size)
            )
        else:
            feed_forward = self.dense_mlp_parameter_count()
        return self.attention_parameter_count() + feed_forward + 2 * self.hidden_size

    def layer_replicated_parameter_count(self, layer_index: int) -> int:
        """What every rank of a tensor/expert-parallel group holds whole of a layer: the norms,
        the router, latent attention's shared low-rank projections, biases added after a sum."""
        hidden = self.hidden_size
        count = 2 * hidden  # input and post-attention norms
        if self.mla is not None:
            mla, bias = self.mla, int(self.mla.bias)
            if mla.q_lora_rank is not None:  # q_a_proj, q_a_layernorm
                count += hidden * mla.q_lora_rank + bias * mla.q_lora_rank + mla.q_lora_rank
            count += hidden * mla.latent_width + bias * mla.latent_width + mla.kv_lora_rank  # kv_a_*
            count += bias * hidden  # o_proj's bias
        else:
            count += 2 * self.head_dim if self.qk_norm else 0
            count += hidden if self.o_bias else 0
        if self.is_sparse_layer(layer_index):
            assert self.moe is not None
            count += self.moe.router_parameter_count(hidden)
        elif self.mlp_bias:
            count += hidden  # down_proj's bias
        return count

    def layer_expert_parameter_count(self, layer_index: int, read: bool = False) -> int:
        """The routed experts of a layer (0 for a dense one); `read`: the top-k a token uses."""
        if not self.is_sparse_layer(layer_index):
            return 0
        assert self.moe is not None
        experts = self.moe.top_k if read else self.moe.num_experts
        return experts * self.moe.expert_parameter_count(self.hidden_size)

    def layers_parameter_count(self, layers: range | None = None) -> int:
        """Parameters of the layers in `layers` (default: all)."""
        indices = range(self.num_layers) if layers is None else layers
        return sum(self.layer_parameter_count(index) for index in indices)

    def embedding_parameter_count(self) -> int:
        return self.vocab_size * self.hidden_size

    def head_parameter_count(self) -> int:
        """The final norm and the output projection (a copy of the embedding when tied)."""
        return self.hidden_size + self.vocab_size * self.hidden_size

    def total_parameter_count(self) -> int:
        head = self.hidden_size if self.tie_word_embeddings else self.head_parameter_count()
        return self.embedding_parameter_count() + self.layers_parameter_count() + head

    def kv_elements_per_token(self) -> int:
        """Cache elements one token adds in each layer: keys and values, or MLA's compressed
        latent plus its rotary key."""
        if self.mla is not None:
            return self.mla.latent_width
        return 2 * self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype_bytes: int, num_layers: int | None = None) -> int:
        """Bytes of cache one token occupies across `num_layers` layers (default: all)."""
        layers = self.num_layers if num_layers is None else num_layers
        return layers * self.kv_elements_per_token() * dtype_bytes


def load_model_config(model_dir: str | Path) -> ModelConfig:
    """Read `config.json` from a checkpoint directory."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelFormatError(f"no config.json in {model_dir}: is this a Hugging Face checkpoint directory?")
    return parse_model_config(read_config_json(path))


def read_config_json(path: Path) -> dict[str, Any]:
    """The JSON object in a Hugging Face `config.json` file, with one-line errors."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"cannot read {path}: {error}") from None
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{path} does not hold a JSON object")
    return raw


def parse_model_config(raw: dict[str, Any]) -> ModelConfig:
    """Build a ModelConfig from the dictionary of a Hugging Face `config.json`."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    activation = raw.get("hidden_act", "silu")
    if activation != "silu":
        raise UnsupportedModelError(f"unsupported hidden_act {activation!r}; supported: 'silu'")
    try:
        hidden_size = int(raw["hidden_size"])
        num_heads = int(raw["num_attention_heads"])
        num_layers = int(raw["num_hidden_layers"])
        common = dict(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=num_layers,
            num_attention_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=_parse_rope(raw),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=_as_id_tuple(raw.get("eos_token_id")),
            checkpoint_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            quantization=parse_quantization(raw),
        )
        traits = _FAMILY_TRAITS[model_type](raw, num_layers)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFormatError(f"config.json is missing or has a bad value for {error}") from None
    return ModelConfig(**{**common, **traits})


def unsupported_quantization(config: ModelConfig) -> str | None:
    """Why the engine cannot load this config's quantized weights (None: it can). Experts of a
    mixture are held in stacked banks, which keep their inputs in order: a checkpoint grouped
    in activation order is refused rather than read wrong. (Formats Tandem cannot read at all
    are refused when parsed.)"""
    if config.quantization is None or config.moe is None or not config.quantization.act_order:
        return None
    return (
        f"quantization_config.quant_method {config.quantization.method!r} in activation order "
        f"(desc_act / actorder) on a mixture of experts ({config.model_type}) is not supported; "
        "supported: experts quantized with their inputs in order"
    )


def engine_refusal(raw: dict[str, Any]) -> str | None:
    """Why the engine cannot run the model of this `config.json` dictionary (None: it can)."""
    try:
        config = parse_model_config(raw)
    except (UnsupportedModelError, ModelFormatError) as error:
        return str(error)
    return unsupported_quantization(config)


def _as_id_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return (int(value),)


def _parse_rope(raw: dict[str, Any]) -> RopeConfig:
    # transformers 5 writes `rope_parameters` (with rope_theta inside); older checkpoints write
    # `rope_theta` at the top level and an optional `rope_scaling`.
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"unsupported rope type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    original = params.get("original_max_position_embeddings")
    if original is None and rope_type == "yarn":  # transformers' default for yarn
        original = raw.get("original_max_position_embeddings") or raw.get("max_position_embeddings", 2048)
    factor = params.get("factor")
    if factor is None and rope_type == "yarn" and original:
        factor = int(raw.get("max_position_embeddings", 2048)) / int(original)

    def optional(key: str) -> float | None:
        value = params.get(key)
        return float(value) if value is not None else None

    return RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=float(factor if factor is not None else 1.0),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(original) if original is not None else None,
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        mscale=optional("mscale"),
        mscale_all_dim=optional("mscale_all_dim"),
        attention_factor=optional("attention_factor"),
        truncate=bool(params.get("truncate", True)),
    )


def _no_sliding(num_layers: int) -> tuple[bool, ...]:
    return (False,) * num_layers


def _llama_traits(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    bias = bool(raw.get("attention_bias", False))
    return dict(
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        sliding_layers=_no_sliding(num_layers),
    )


def _mistral_traits(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    window = raw.get("sliding_window")
    return dict(
        sliding_window=int(window) if window else None,
        sliding_layers=(bool(window),) * num_layers,
    )


def _qwen_sliding(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Qwen2/Qwen3 use a window only when `use_sliding_window`, on layers from `max_window_layers` on."""
    window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
    layer_types = raw.get("layer_types")
    if window and isinstance(layer_types, list) and len(layer_types) == num_layers:
        flags = tuple(kind == "sliding_attention" for kind in layer_types)
    elif window:
        first = int(raw.get("max_window_layers", num_layers))
        flags = tuple(index >= first for index in range(num_layers))
    else:
        flags = _no_sliding(num_layers)
    return dict(sliding_window=int(window) if window else None, sliding_layers=flags)


def _qwen2_traits(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    return dict(qkv_bias=True, **_qwen_sliding(raw, num_layers))


def _qwen3_traits(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    bias = bool(raw.get("attention_bias", False))
    return dict(qkv_bias=bias, o_bias=bias, qk_norm=True, **_qwen_sliding(raw, num_layers))


def _mixtral_traits(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    return dict(moe=mixtral_moe(raw, num_layers), **_mistral_traits(raw, num_layers))


def _qwen3_moe_traits(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    bias = bool(raw.get("attention_bias", False))
    # Qwen3-MoE applies its window to every layer when `use_sliding_window` is set.
    window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
    return dict(
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=True,
        sliding_window=int(window) if window else None,
        sliding_layers=(bool(window),) * num_layers,
        moe=qwen3_moe(raw, num_layers),
    )


def _deepseek_v3_traits(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """DeepSeek-V3 and Kimi-K2. Every head has its own keys and values (expanded from the shared
    latent), and rotary embedding acts on the `qk_rope_head_dim` part only, which is what
    `head_dim` names here. The multi-token-prediction layers (`num_nextn_predict_layers`) lie
    past `num_hidden_layers` and are not used to decode."""
    rope = _parse_rope(raw)
    mla = latent_attention(raw, rope)
    return dict(
        num_kv_heads=int(raw["num_attention_heads"]),
        head_dim=mla.qk_rope_head_dim,
        sliding_layers=_no_sliding(num_layers),
        moe=deepseek_moe(raw, num_layers),
        mla=mla,
    )


# transformers' GptOssConfig rope when a config.json names none.
GPT_OSS_ROPE = dict(
    rope_type="yarn",
    factor=32.0,
    beta_fast=32.0,
    beta_slow=1.0,
    truncate=False,
    original_max_position_embeddings=4096,
)


def _gpt_oss_traits(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """gpt-oss: biased attention with sinks, layers alternating between a sliding window and
    the whole context as `layer_types` lists them (transformers' default: even layers slide)."""
    window = raw.get("sliding_window")
    layer_types = raw.get("layer_types")
    if layer_types is None:
        layer_types = [
            "sliding_attention" if index % 2 == 0 else "full_attention" for index in range(num_layers)
        ]
    if not isinstance(layer_types, list) or len(layer_types) != num_layers:
        raise ModelFormatError(f"invalid model config: layer_types needs one entry per layer ({num_layers})")
    kinds = ("sliding_attention", "full_attention")
    unknown = sorted({str(kind) for kind in layer_types if kind not in kinds})
    if unknown:
        raise UnsupportedModelError(
            f"unsupported layer_types {', '.join(unknown)}; supported: {', '.join(kinds)}"
        )
    bias = bool(raw.get("attention_bias", True))
    rope = {}
    if not raw.get("rope_parameters") and not raw.get("rope_scaling"):
        defaults = dict(raw, rope_scaling=GPT_OSS_ROPE, rope_theta=raw.get("rope_theta", 150000.0))
        rope = dict(rope=_parse_rope(defaults))
    return dict(
        rope,
        qkv_bias=bias,
        o_bias=bias,
        attention_sinks=True,
        sliding_window=int(window) if window else None,
        sliding_layers=tuple(bool(window) and kind == "sliding_attention" for kind in layer_types),
        moe=gpt_oss_moe(raw, num_layers),
    )


_FAMILY_TRAITS = {
    "llama": _llama_traits,
    "mistral": _mistral_traits,
    "qwen2": _qwen2_traits,
    "qwen3": _qwen3_traits,
    "mixtral": _mixtral_traits,
    "qwen3_moe": _qwen3_moe_traits,
    "deepseek_v3": _deepseek_v3_traits,
    "kimi_k2": _deepseek_v3_traits,
    "gpt_oss": _gpt_oss_traits,
}
