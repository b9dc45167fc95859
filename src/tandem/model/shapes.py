"""What placement needs to know of a model: layer sizes, what a token reads, what it caches.

Pure Python (no torch). Dense families come through the engine's `ModelConfig`; the
mixture-of-experts families (Qwen3-MoE, Mixtral, DeepSeek-V3, Kimi-K2) are read straight from a
Hugging Face `config.json`, because placement must plan them before the engine can run them.

Counts are parameters and cache elements, never bytes: the bytes depend on the dtype each
device runs and on the weights' quantization, which placement decides. So that it can, a shape
also lists each layer's linear projections by kind (`LinearRole`), which a quantized format
may hold compactly, and carries the checkpoint's own format and dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.errors import ModelFormatError, UnsupportedModelError
from tandem.model.config import ModelConfig, parse_model_config, read_config_json
from tandem.model.quantization import QuantFormat, parse_quantization


@dataclass(frozen=True)
class LinearRole:
    """The linear projections of one kind in a layer: `module` names one of them relative to the
    layer ("self_attn.q_proj", "mlp.experts.0.down_proj"), which is what a format's exclusions
    are matched against; `stored` and `read` count their weights (no biases, norms or routers)."""

    module: str
    stored: int
    read: int


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a decoder-only model, per layer, as placement counts them.

    `layer_parameters_read` is what one decoded token reads of each layer: every parameter of a
    dense layer; for a mixture-of-experts layer the attention, the router, the shared experts and
    the top-k routed experts. `head_parameters` is the final norm plus the output projection, a
    full copy even when tied, because a last stage without the embedding must hold one.
    """

    name: str
    layer_parameters: tuple[int, ...]
    layer_parameters_read: tuple[int, ...]
    layer_kv_elements: tuple[int, ...]  # cache elements one token adds in each layer (keys + values)
    embedding_parameters: int
    head_parameters: int
    tie_word_embeddings: bool
    hidden_size: int  # one token's activation between stages has this many elements
    max_context: int
    # Per layer, its linear projections by kind (what quantization may shrink); () : not known.
    layer_linears: tuple[tuple[LinearRole, ...], ...] = ()
    quantization: QuantFormat | None = None  # the checkpoint's own quantized format
    checkpoint_dtype: str = "float32"  # what its unquantized tensors are stored in

    def __post_init__(self) -> None:
        layers = len(self.layer_parameters)
        if layers == 0:
            raise ModelFormatError(f"model {self.name!r} has no layers")
        if len(self.layer_parameters_read) != layers or len(self.layer_kv_elements) != layers:
            raise ModelFormatError(f"model {self.name!r}: every per-layer count needs one entry per layer")
        if any(
            read > stored
            for read, stored in zip(self.layer_parameters_read, self.layer_parameters, strict=True)
        ):
            raise ModelFormatError(f"model {self.name!r}: a layer cannot read more parameters than it has")
        if self.tie_word_embeddings and self.head_parameters < self.embedding_parameters:
            raise ModelFormatError(f"model {self.name!r}: a tied head must be at least the embedding's size")
        if self.layer_linears and len(self.layer_linears) != layers:
            raise ModelFormatError(f"model {self.name!r}: layer_linears needs one entry per layer")

    @property
    def num_layers(self) -> int:
        return len(self.layer_parameters)

    @property
    def shared_head_parameters(self) -> int:
        """What the head adds on a stage that also holds the embedding (a tied head shares it)."""
        return (
            self.head_parameters - self.embedding_parameters
            if self.tie_word_embeddings
            else self.head_parameters
        )

    def total_parameter_count(self) -> int:
        """Parameters of the checkpoint, a tied head counted once."""
        return self.embedding_parameters + sum(self.layer_parameters) + self.shared_head_parameters

    def active_parameter_count(self) -> int:
        """Parameters one token uses, counted the way model cards count "active" (embedding whole)."""
        return self.embedding_parameters + sum(self.layer_parameters_read) + self.shared_head_parameters

    @property
    def head_linear_parameters(self) -> int:
        """The output projection's weights (the head less its final norm)."""
        return self.head_parameters - self.hidden_size

    def quantized_layer_parameters(self, fmt: QuantFormat | None) -> tuple[tuple[int, int], ...]:
        """(stored, read) weights of each layer that `fmt` holds quantized; the rest stays 16-bit."""
        if fmt is None or not self.layer_linears:
            return ((0, 0),) * self.num_layers
        counts = []
        for index, roles in enumerate(self.layer_linears):
            quantized = [role for role in roles if fmt.quantizes(f"model.layers.{index}.{role.module}")]
            counts.append((sum(r.stored for r in quantized), sum(r.read for r in quantized)))
        return tuple(counts)


def shape_from_model_config(config: ModelConfig, name: str | None = None) -> ModelShape:
    """The shape of a dense model the engine runs (Llama, Mistral, Qwen2, Qwen3)."""
    per_layer = config.layer_parameter_count()
    hidden, q_out = config.hidden_size, config.num_attention_heads * config.head_dim
    attention = 2 * hidden * q_out + 2 * hidden * config.num_kv_heads * config.head_dim
    linears = (
        LinearRole("self_attn.q_proj", attention, attention),
        LinearRole("mlp.down_proj", *(_gated_mlp(hidden, config.intermediate_size),) * 2),
    )
    return ModelShape(
        name=name or config.model_type,
        layer_parameters=(per_layer,) * config.num_layers,
        layer_parameters_read=(per_layer,) * config.num_layers,
        layer_kv_elements=(2 * config.num_kv_heads * config.head_dim,) * config.num_layers,
        embedding_parameters=config.embedding_parameter_count(),
        head_parameters=config.head_parameter_count(),
        tie_word_embeddings=config.tie_word_embeddings,
        hidden_size=config.hidden_size,
        max_context=config.max_position_embeddings,
        layer_linears=(linears,) * config.num_layers,
        quantization=config.quantization,
        checkpoint_dtype=config.checkpoint_dtype,
    )


def shape_from_hf_config(raw: dict[str, Any], name: str | None = None) -> ModelShape:
    """The shape of any supported model, from the dictionary of its Hugging Face `config.json`."""
    model_type = raw.get("model_type")
    builder = _BUILDERS.get(model_type) if isinstance(model_type, str) else None
    if builder is None:
        raise UnsupportedModelError(
            f"placement cannot size model_type {model_type!r}; supported: {', '.join(sorted(_BUILDERS))}"
        )
    name = name or raw.get("_name_or_path") or model_type
    try:
        return builder(raw, name)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFormatError(f"{model_type} config is missing or has a bad value for {error}") from None


def load_shape(path: str | Path) -> ModelShape:
    """The shape of the model at `path`: a checkpoint directory, or a `config.json` file itself.

    The name is the checkpoint directory's name, or the file's name when it is not `config.json`.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        config_path, name = path / "config.json", path.name
        if not config_path.is_file():
            raise ModelFormatError(f"no config.json in {path}: is this a Hugging Face checkpoint directory?")
    elif path.is_file():
        config_path = path
        name = path.parent.name if path.name == "config.json" else path.stem.removesuffix("-config")
    else:
        raise ModelFormatError(f"model {str(path)!r} not found: give a checkpoint directory or a config.json")
    raw = read_config_json(config_path)
    return shape_from_hf_config(raw, name=raw.get("_name_or_path") or name)


# Building blocks, in parameters. Names follow the Hugging Face modules they count.


def _grouped_query_attention(raw: dict[str, Any], qk_norm: bool) -> int:
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    head_dim = int(raw.get("head_dim") or hidden // heads)
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    count = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    if raw.get("attention_bias"):
        count += q_out + 2 * kv_out + hidden
    if qk_norm:
        count += 2 * head_dim
    return count


def _grouped_query_linear(raw: dict[str, Any]) -> LinearRole:
    """q/k/v/o projections' weights."""
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    head_dim = int(raw.get("head_dim") or hidden // heads)
    count = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    return LinearRole("self_attn.q_proj", count, count)


def _grouped_query_kv_elements(raw: dict[str, Any]) -> int:
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    head_dim = int(raw.get("head_dim") or hidden // heads)
    return 2 * int(raw.get("num_key_value_heads") or heads) * head_dim


def _gated_mlp(hidden: int, intermediate: int) -> int:
    """gate_proj, up_proj and down_proj without bias."""
    return 3 * hidden * intermediate


@dataclass(frozen=True)
class _Layer:
    stored: int
    read: int
    linears: tuple[LinearRole, ...] = ()


def _dense_feed_forward(hidden: int, intermediate: int, module: str = "mlp.down_proj") -> _Layer:
    count = _gated_mlp(hidden, intermediate)
    return _Layer(count, count, (LinearRole(module, count, count),))


def _mixture_of_experts(
    hidden: int,
    expert_intermediate: int,
    routed: int,
    top_k: int,
    shared: int = 0,
    router_extra: int = 0,
    expert_module: str = "mlp.experts.0.down_proj",
) -> _Layer:
    """Routed experts plus always-on shared experts; a token reads the router, shared, and top-k.
    The router stays 16-bit under quantization (it is not listed among the linears)."""
    expert = _gated_mlp(hidden, expert_intermediate)
    always = routed * hidden + router_extra + shared * expert
    linears = [LinearRole(expert_module, routed * expert, top_k * expert)]
    if shared:
        linears.append(LinearRole("mlp.shared_experts.down_proj", shared * expert, shared * expert))
    return _Layer(stored=always + routed * expert, read=always + top_k * expert, linears=tuple(linears))


def _assemble(
    raw: dict[str, Any],
    name: str,
    attention: int,
    kv_elements: int,
    feed_forwards: list[_Layer],
    attention_linear: LinearRole,
) -> ModelShape:
    """One decoder layer = attention + feed-forward + two norms; embedding and head from vocab × hidden."""
    hidden, vocab = int(raw["hidden_size"]), int(raw["vocab_size"])
    norms = 2 * hidden
    return ModelShape(
        name=name,
        layer_parameters=tuple(attention + ffn.stored + norms for ffn in feed_forwards),
        layer_parameters_read=tuple(attention + ffn.read + norms for ffn in feed_forwards),
        layer_kv_elements=(kv_elements,) * len(feed_forwards),
        embedding_parameters=vocab * hidden,
        head_parameters=hidden + vocab * hidden,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        hidden_size=hidden,
        max_context=int(raw.get("max_position_embeddings", 2048)),
        layer_linears=tuple((attention_linear, *ffn.linears) for ffn in feed_forwards),
        quantization=parse_quantization(raw),
        checkpoint_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
    )


# One builder per model_type.


def _dense_shape(raw: dict[str, Any], name: str) -> ModelShape:
    return shape_from_model_config(parse_model_config(raw), name)


def _qwen3_moe_shape(raw: dict[str, Any], name: str) -> ModelShape:
    """Qwen3-MoE: a layer is sparse unless listed in `mlp_only_layers` or off `decoder_sparse_step`."""
    hidden, layers = int(raw["hidden_size"]), int(raw["num_hidden_layers"])
    experts, step = int(raw.get("num_experts", 0)), int(raw.get("decoder_sparse_step", 1))
    dense_only = set(raw.get("mlp_only_layers") or ())
    dense_mlp = _dense_feed_forward(hidden, int(raw.get("intermediate_size", 0)))
    sparse = _mixture_of_experts(
        hidden, int(raw["moe_intermediate_size"]), experts, int(raw["num_experts_per_tok"])
    )
    feed_forwards = [
        sparse if index not in dense_only and experts > 0 and (index + 1) % step == 0 else dense_mlp
        for index in range(layers)
    ]
    attention = _grouped_query_attention(raw, qk_norm=True)
    return _assemble(
        raw, name, attention, _grouped_query_kv_elements(raw), feed_forwards, _grouped_query_linear(raw)
    )


def _mixtral_shape(raw: dict[str, Any], name: str) -> ModelShape:
    hidden, layers = int(raw["hidden_size"]), int(raw["num_hidden_layers"])
    sparse = _mixture_of_experts(
        hidden,
        int(raw["intermediate_size"]),
        int(raw["num_local_experts"]),
        int(raw["num_experts_per_tok"]),
        expert_module="block_sparse_moe.experts.0.w2",
    )
    attention = _grouped_query_attention(raw, qk_norm=False)
    return _assemble(
        raw, name, attention, _grouped_query_kv_elements(raw), [sparse] * layers, _grouped_query_linear(raw)
    )


def _multi_head_latent_attention(raw: dict[str, Any]) -> int:
    """DeepSeek's MLA: queries and keys/values pass through low-rank projections with their own norms."""
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    q_lora, kv_lora = raw.get("q_lora_rank"), int(raw["kv_lora_rank"])
    nope, rope, value = int(raw["qk_nope_head_dim"]), int(raw["qk_rope_head_dim"]), int(raw["v_head_dim"])
    bias = bool(raw.get("attention_bias", False))
    if q_lora:  # q_a_proj, q_a_layernorm, q_b_proj
        query = (
            hidden * int(q_lora) + int(bias) * int(q_lora) + int(q_lora) + int(q_lora) * heads * (nope + rope)
        )
    else:  # q_proj
        query = hidden * heads * (nope + rope)
    key_value = (  # kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj
        hidden * (kv_lora + rope) + int(bias) * (kv_lora + rope) + kv_lora + kv_lora * heads * (nope + value)
    )
    output = heads * value * hidden + int(bias) * hidden
    return query + key_value + output


def _multi_head_latent_linear(raw: dict[str, Any]) -> LinearRole:
    """MLA's projections' weights (q_a/q_b or q, kv_a_proj_with_mqa, kv_b, o)."""
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    q_lora, kv_lora = raw.get("q_lora_rank"), int(raw["kv_lora_rank"])
    nope, rope, value = int(raw["qk_nope_head_dim"]), int(raw["qk_rope_head_dim"]), int(raw["v_head_dim"])
    query = (hidden + heads * (nope + rope)) * int(q_lora) if q_lora else hidden * heads * (nope + rope)
    count = query + hidden * (kv_lora + rope) + kv_lora * heads * (nope + value) + heads * value * hidden
    return LinearRole("self_attn.o_proj", count, count)


def _deepseek_v3_shape(raw: dict[str, Any], name: str) -> ModelShape:
    """DeepSeek-V3 and Kimi-K2: dense first layers, then routed + shared experts on every
    `moe_layer_freq`-th layer. The multi-token-prediction layers (`num_nextn_predict_layers`) lie
    outside `num_hidden_layers`, are not used to decode, and are not counted."""
    hidden, layers = int(raw["hidden_size"]), int(raw["num_hidden_layers"])
    routed = int(raw.get("n_routed_experts") or 0)
    first_sparse, frequency = int(raw.get("first_k_dense_replace", 0)), int(raw.get("moe_layer_freq", 1))
    dense_mlp = _dense_feed_forward(hidden, int(raw["intermediate_size"]))
    sparse = _mixture_of_experts(
        hidden,
        int(raw["moe_intermediate_size"]),
        routed,
        int(raw["num_experts_per_tok"]),
        shared=int(raw.get("n_shared_experts") or 0),
        router_extra=routed,  # e_score_correction_bias, one per routed expert
    )
    feed_forwards = [
        sparse if routed and index >= first_sparse and index % frequency == 0 else dense_mlp
        for index in range(layers)
    ]
    # MLA caches one compressed latent plus the shared rotary key per token, not per-head K and V.
    kv_elements = int(raw["kv_lora_rank"]) + int(raw["qk_rope_head_dim"])
    return _assemble(
        raw,
        name,
        _multi_head_latent_attention(raw),
        kv_elements,
        feed_forwards,
        _multi_head_latent_linear(raw),
    )


_BUILDERS: dict[str, Callable[[dict[str, Any], str], ModelShape]] = {
    "llama": _dense_shape,
    "mistral": _dense_shape,
    "qwen2": _dense_shape,
    "qwen3": _dense_shape,
    "qwen3_moe": _qwen3_moe_shape,
    "mixtral": _mixtral_shape,
    "deepseek_v3": _deepseek_v3_shape,
    "kimi_k2": _deepseek_v3_shape,
}
