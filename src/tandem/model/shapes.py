"""What placement needs to know of a model: layer sizes, what a token reads, what it caches.

Pure Python (no torch). Every family comes through the engine's own `ModelConfig`
(`tandem.model.config`), so placement counts exactly what the engine holds and caches: one
source of truth for parameters per layer (dense, sparse, latent attention) and for the cache a
token adds (keys and values, or latent attention's compressed latent). A config the engine
refuses (an unsupported router, rope or architecture) has no shape either: placement never
predicts speeds for a model that cannot run.

Counts are parameters and cache elements, never bytes: the bytes depend on the dtype each
device runs and on the quantized format of the weights (`layer_linears` says which weights a
format may shrink), which placement decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tandem.errors import ModelFormatError, UnsupportedModelError
from tandem.model.config import SUPPORTED_MODEL_TYPES, ModelConfig, parse_model_config, read_config_json
from tandem.model.quantization import QuantFormat


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
    # For groups of ranks sharing a stage (`for_group`); () : none. Parameters every rank holds
    # whole (norms, routers, latent attention's shared projections), and the routed experts of
    # `num_experts` a layer, which ranks split whole, stored and read per token (top-k).
    layer_replicated_parameters: tuple[int, ...] = ()
    layer_expert_parameters: tuple[int, ...] = ()
    layer_expert_parameters_read: tuple[int, ...] = ()
    num_experts: int = 0
    kv_replicated: bool = False  # every rank keeps the whole cache (latent attention's latent)
    # Per layer, its linear projections by kind (what quantization may shrink); () : not known.
    layer_linears: tuple[tuple[LinearRole, ...], ...] = ()
    quantization: QuantFormat | None = None  # the checkpoint's own quantized format
    checkpoint_dtype: str = "float32"  # what its unquantized tensors are stored in
    # Whether a stage may be split over a group of ranks (the family has a tensor- and
    # expert-parallel plan); False: each stage runs on one device.
    splits_over_ranks: bool = True
    # Whether quantizing at load (`quantize`) also holds the embedding and head in int8 rows, as
    # for text models; False: they stay in the device's dtype (an image model's embedders and
    # output layers).
    quantizes_ends_at_load: bool = True

    def __post_init__(self) -> None:
        layers = len(self.layer_parameters)
        if layers == 0:
            raise ModelFormatError(f"model {self.name!r} has no layers")
        if len(self.layer_parameters_read) != layers or len(self.layer_kv_elements) != layers:
            raise ModelFormatError(f"model {self.name!r}: every per-layer count needs one entry per layer")
        optional = (
            self.layer_replicated_parameters,
            self.layer_expert_parameters,
            self.layer_expert_parameters_read,
        )
        if any(counts and len(counts) != layers for counts in optional):
            raise ModelFormatError(f"model {self.name!r}: every per-layer count needs one entry per layer")
        if any(self.layer_expert_parameters) and self.num_experts < 1:
            raise ModelFormatError(f"model {self.name!r}: experts are counted but num_experts is not set")
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

    def for_group(self, size: int) -> ModelShape:
        """The shape as a group of `size` ranks sharing each stage holds it, counted as `size`
        times its largest member's share, so that it compares with the group's pooled memory and
        bandwidth (`placement_groups`): parts held whole count `size` times, routed experts are
        split whole (8 over 3 ranks: 3 on the largest), the rest evenly; the cache is split with
        the heads, or whole on every rank for latent attention. Reading assumes a token's top-k
        experts spread evenly over the ranks."""
        if size == 1:
            return self
        layers = range(self.num_layers)
        replicated = self.layer_replicated_parameters or (0,) * self.num_layers
        experts = self.layer_expert_parameters or (0,) * self.num_layers
        largest_share = -(-self.num_experts // size) / self.num_experts if self.num_experts else 0.0
        held = tuple(
            round(
                size * replicated[i]
                + (self.layer_parameters[i] - replicated[i] - experts[i])
                + size * experts[i] * largest_share
            )
            for i in layers
        )
        read = tuple(self.layer_parameters_read[i] + (size - 1) * replicated[i] for i in layers)
        kv = tuple(size * k for k in self.layer_kv_elements) if self.kv_replicated else self.layer_kv_elements
        # A layer's linears scale as the layer does (the group's extra copies are mostly of them).
        linears = tuple(
            tuple(
                LinearRole(
                    role.module,
                    round(role.stored * held[i] / self.layer_parameters[i]),
                    round(role.read * read[i] / self.layer_parameters_read[i]),
                )
                for role in roles
            )
            for i, roles in enumerate(self.layer_linears)
        )
        return replace(
            self,
            layer_parameters=held,
            layer_parameters_read=read,
            layer_kv_elements=kv,
            layer_linears=linears,
            layer_replicated_parameters=(),
            layer_expert_parameters=(),
            layer_expert_parameters_read=(),
            num_experts=0,
            kv_replicated=False,
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


# gpt-oss: no tensor- or expert-parallel plan yet (`engine/parallel/apply.py` refuses it), and
# its experts, held in the checkpoint's stacked layout with biases, are not quantized at load.
SINGLE_RANK_TYPES = ("gpt_oss",)
STACKED_EXPERT_TYPES = ("gpt_oss",)


def shape_from_model_config(config: ModelConfig, name: str | None = None) -> ModelShape:
    """The shape of a model as the engine builds it, layer by layer."""
    layers = range(config.num_layers)
    return ModelShape(
        name=name or config.model_type,
        layer_parameters=tuple(config.layer_parameter_count(i) for i in layers),
        layer_parameters_read=tuple(config.layer_parameters_read(i) for i in layers),
        layer_kv_elements=(config.kv_elements_per_token(),) * config.num_layers,
        embedding_parameters=config.embedding_parameter_count(),
        head_parameters=config.head_parameter_count(),
        tie_word_embeddings=config.tie_word_embeddings,
        hidden_size=config.hidden_size,
        max_context=config.max_position_embeddings,
        layer_replicated_parameters=tuple(config.layer_replicated_parameter_count(i) for i in layers),
        layer_expert_parameters=tuple(config.layer_expert_parameter_count(i) for i in layers),
        layer_expert_parameters_read=tuple(config.layer_expert_parameter_count(i, read=True) for i in layers),
        num_experts=config.moe.num_experts if config.moe is not None else 0,
        kv_replicated=config.mla is not None,
        layer_linears=tuple(layer_linears(config, i) for i in layers),
        quantization=config.quantization,
        checkpoint_dtype=config.checkpoint_dtype,
        splits_over_ranks=config.model_type not in SINGLE_RANK_TYPES,
    )


def layer_linears(config: ModelConfig, layer_index: int) -> tuple[LinearRole, ...]:
    """The weights of a layer's linear projections by kind, named as a format's exclusions see
    them (the router, norms and biases stay 16-bit and are not listed)."""
    hidden = config.hidden_size
    if config.mla is not None:
        mla, heads = config.mla, config.num_attention_heads
        nope, rope, value = mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.v_head_dim
        if mla.q_lora_rank:
            query = (hidden + heads * (nope + rope)) * mla.q_lora_rank
        else:
            query = hidden * heads * (nope + rope)
        # kv_b_proj is not listed: the engine holds it in 16 bits (its per-head blocks are what
        # the absorbed decode multiplies), whatever the checkpoint stores.
        count = query + hidden * mla.latent_width
        attention = LinearRole(
            "self_attn.o_proj", count + heads * value * hidden, count + heads * value * hidden
        )
    else:
        q_out, kv_out = config.num_attention_heads * config.head_dim, config.num_kv_heads * config.head_dim
        count = 2 * hidden * q_out + 2 * hidden * kv_out
        attention = LinearRole("self_attn.q_proj", count, count)
    if not config.is_sparse_layer(layer_index):
        mlp = 3 * hidden * config.intermediate_size
        return (attention, LinearRole("mlp.down_proj", mlp, mlp))
    assert config.moe is not None
    moe = config.moe
    if config.model_type in STACKED_EXPERT_TYPES:
        return (attention,)  # its experts stay 16-bit whatever `--quantize` asks
    expert = 3 * hidden * moe.expert_intermediate_size
    module = "block_sparse_moe.experts.0.w2" if config.model_type == "mixtral" else "mlp.experts.0.down_proj"
    roles = [attention, LinearRole(module, moe.num_experts * expert, moe.top_k * expert)]
    if moe.shared_intermediate_size:
        shared = 3 * hidden * moe.shared_intermediate_size
        roles.append(LinearRole("mlp.shared_experts.down_proj", shared, shared))
    return tuple(roles)


def shape_from_hf_config(raw: dict[str, Any], name: str | None = None) -> ModelShape:
    """The shape of any supported model, from the dictionary of its Hugging Face `config.json`."""
    model_type = raw.get("model_type")
    builder = _BUILDERS.get(model_type) if isinstance(model_type, str) else None
    if builder is None:
        raise UnsupportedModelError(
            f"placement cannot size model_type {model_type!r}; supported: {', '.join(sorted(_BUILDERS))}"
        )
    name = str(name or raw.get("_name_or_path") or model_type)
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


_BUILDERS: dict[str, Callable[[dict[str, Any], str], ModelShape]] = {
    model_type: (lambda raw, name: shape_from_model_config(parse_model_config(raw), name))
    for model_type in SUPPORTED_MODEL_TYPES
}
