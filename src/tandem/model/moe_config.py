"""Mixture-of-experts and latent-attention parts of a model configuration, and how the Mixtral,
Qwen3-MoE and DeepSeek-V3 (Kimi-K2) `config.json` files describe them.

Pure Python (no torch), like `tandem.model.config`, which holds these values in `ModelConfig`.
Where a field is missing the defaults are those of the `transformers` configuration class of the
family (the reference the engine is tested against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tandem.errors import ModelFormatError, UnsupportedModelError

if TYPE_CHECKING:
    from tandem.model.config import RopeConfig

ROUTER_SCORING = ("softmax", "sigmoid", "topk_softmax")
# DeepSeek-V3's `topk_method` and `scoring_func`: the auxiliary-loss-free router is the one its
# checkpoints (and Kimi-K2's) ship; V2's softmax greedy routers are other architectures.
SUPPORTED_TOPK_METHODS = ("noaux_tc",)
SUPPORTED_DEEPSEEK_SCORING = ("sigmoid",)


@dataclass(frozen=True)
class RouterConfig:
    """How a token's experts and their weights are chosen from the router's logits.

    softmax (Mixtral, Qwen3-MoE): probabilities over all experts, the top k kept. topk_softmax
    (gpt-oss): the k largest logits (the router has a bias), then a softmax over those k. sigmoid
    (DeepSeek-V3): independent scores; `e_score_correction_bias` is added for choosing only,
    experts are first limited to the best `topk_group` of `n_group` groups (a group ranked by
    the sum of its two best biased scores), and the chosen weights are the unbiased scores.
    """

    scoring: str
    normalize: bool  # top-k weights rescaled to sum to 1 (`norm_topk_prob`)
    scaling_factor: float = 1.0  # `routed_scaling_factor`, applied after normalizing
    correction_bias: bool = False  # `e_score_correction_bias`, one per expert
    num_groups: int = 1  # `n_group`
    groups_chosen: int = 1  # `topk_group`
    # Qwen3-MoE rounds the weights to the activation dtype before weighting the experts; the
    # others weight in float32 and round the product.
    round_weights: bool = False
    # DeepSeek keeps the router's weight (and bias) in float32 whatever the model's dtype.
    float32: bool = False
    bias: bool = False  # gpt-oss: the router's linear map has a bias, one per expert

    def __post_init__(self) -> None:
        if self.scoring not in ROUTER_SCORING:
            raise UnsupportedModelError(
                f"unsupported router scoring {self.scoring!r}; supported: {', '.join(ROUTER_SCORING)}"
            )


@dataclass(frozen=True)
class MoEConfig:
    """The sparse feed-forward blocks: `num_experts` routed experts (gated MLPs of
    `expert_intermediate_size`), `top_k` of them per token, plus always-on shared experts of
    `shared_intermediate_size` in all (0: none). `sparse_layers` flags, per layer, whether its
    feed-forward is this block (else a dense MLP of the model's `intermediate_size`)."""

    num_experts: int
    top_k: int
    expert_intermediate_size: int
    router: RouterConfig
    sparse_layers: tuple[bool, ...]
    shared_intermediate_size: int = 0
    # gpt-oss: every expert's projections have biases, and its activation is the clamped SwiGLU
    # (gate clamped above and up on both sides at `swiglu_limit`, gate · sigmoid(alpha · gate) ·
    # (up + 1)); None: SiLU(gate) · up.
    expert_bias: bool = False
    swiglu_limit: float | None = None
    swiglu_alpha: float = 1.702

    def __post_init__(self) -> None:
        checks = [
            (self.num_experts > 0, "the number of experts must be positive"),
            (
                0 < self.top_k <= self.num_experts,
                f"num_experts_per_tok ({self.top_k}) must be between 1 and the {self.num_experts} experts",
            ),
            (self.expert_intermediate_size > 0, "the experts' intermediate size must be positive"),
            (
                self.router.num_groups > 0 and self.num_experts % self.router.num_groups == 0,
                f"n_group ({self.router.num_groups}) must divide the {self.num_experts} routed experts",
            ),
            (
                0 < self.router.groups_chosen <= self.router.num_groups,
                f"topk_group ({self.router.groups_chosen}) must be between 1 and n_group "
                f"({self.router.num_groups})",
            ),
            (
                self.top_k <= self.router.groups_chosen * (self.num_experts // self.router.num_groups),
                f"num_experts_per_tok ({self.top_k}) is more than the experts of {self.router.groups_chosen} groups",
            ),
            (
                self.router.num_groups == 1 or self.num_experts // self.router.num_groups >= 2,
                "group-limited routing ranks a group by its two best experts: each group needs two",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelFormatError(f"invalid model config: {message}")

    def expert_parameter_count(self, hidden: int) -> int:
        """One routed expert: gate, up and down projections (and their biases)."""
        inner = self.expert_intermediate_size
        return 3 * hidden * inner + ((2 * inner + hidden) if self.expert_bias else 0)

    def router_parameter_count(self, hidden: int) -> int:
        extra = int(self.router.correction_bias) + int(self.router.bias)
        return self.num_experts * (hidden + extra)

    def parameter_count(self, hidden: int) -> int:
        """Router, shared experts and every routed expert of one sparse layer."""
        return self._always(hidden) + self.num_experts * self.expert_parameter_count(hidden)

    def parameters_read(self, hidden: int) -> int:
        """What one token reads of a sparse layer: router, shared experts, its top-k experts."""
        return self._always(hidden) + self.top_k * self.expert_parameter_count(hidden)

    def _always(self, hidden: int) -> int:
        return self.router_parameter_count(hidden) + 3 * hidden * self.shared_intermediate_size


@dataclass(frozen=True)
class MLAConfig:
    """DeepSeek's multi-head latent attention. Queries come from `q_proj`, or through a low-rank
    `q_a_proj` → norm → `q_b_proj` when `q_lora_rank` is set; keys and values come from one
    compressed latent of `kv_lora_rank` (normalized, then expanded per head by `kv_b_proj`) plus
    one rotary key of `qk_rope_head_dim` shared by every head. A token caches only the latent and
    the rotary key. `softmax_scale` is the checkpoint's: qk_head_dim^-0.5, times yarn's mscale
    squared when the rope is yarn with `mscale_all_dim`."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    softmax_scale: float
    rope_interleave: bool = True  # rotary pairs are (x0, x1), (x2, x3), … rather than halves
    bias: bool = False  # `attention_bias`: q_a_proj, kv_a_proj_with_mqa and o_proj

    def __post_init__(self) -> None:
        dims = (self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim)
        if min(dims) <= 0 or (self.q_lora_rank is not None and self.q_lora_rank <= 0):
            raise ModelFormatError("invalid model config: latent attention sizes must be positive")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_width(self) -> int:
        """Cache elements per token and layer: the latent and the rotary key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def parameter_count(self, hidden: int, heads: int) -> int:
        bias = int(self.bias)
        if self.q_lora_rank is not None:  # q_a_proj, q_a_layernorm, q_b_proj
            rank = self.q_lora_rank
            query = hidden * rank + bias * rank + rank + rank * heads * self.qk_head_dim
        else:  # q_proj
            query = hidden * heads * self.qk_head_dim
        # kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj
        key_value = (
            hidden * self.latent_width
            + bias * self.latent_width
            + self.kv_lora_rank
            + self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
        )
        output = heads * self.v_head_dim * hidden + bias * hidden
        return query + key_value + output


def _get(raw: dict[str, Any], key: str, default: Any) -> Any:
    """raw[key], or `default` when it is missing or null."""
    value = raw.get(key)
    return default if value is None else value


def mixtral_moe(raw: dict[str, Any], num_layers: int) -> MoEConfig:
    """Mixtral: every layer sparse, softmax router, top-k weights always renormalized."""
    return MoEConfig(
        num_experts=int(raw["num_local_experts"]),
        top_k=int(raw["num_experts_per_tok"]),
        expert_intermediate_size=int(raw["intermediate_size"]),
        router=RouterConfig(scoring="softmax", normalize=True),
        sparse_layers=(True,) * num_layers,
    )


def qwen3_moe(raw: dict[str, Any], num_layers: int) -> MoEConfig:
    """Qwen3-MoE: a layer is sparse unless listed in `mlp_only_layers` or off `decoder_sparse_step`."""
    # Hub checkpoints write `num_experts`; transformers 5 saves the same value as `num_local_experts`.
    experts = int(_get(raw, "num_experts", _get(raw, "num_local_experts", 128)))
    step = int(_get(raw, "decoder_sparse_step", 1))
    dense_only = {int(i) for i in _get(raw, "mlp_only_layers", [])}
    if step < 1:
        raise ModelFormatError(f"invalid model config: decoder_sparse_step must be positive, got {step}")
    return MoEConfig(
        num_experts=experts,
        top_k=int(_get(raw, "num_experts_per_tok", 8)),
        expert_intermediate_size=int(raw["moe_intermediate_size"]),
        router=RouterConfig(
            scoring="softmax", normalize=bool(_get(raw, "norm_topk_prob", False)), round_weights=True
        ),
        sparse_layers=tuple(
            index not in dense_only and (index + 1) % step == 0 for index in range(num_layers)
        ),
    )


def gpt_oss_moe(raw: dict[str, Any], num_layers: int) -> MoEConfig:
    """gpt-oss: every layer sparse; the router (with a bias) keeps the k largest logits and
    softmaxes them; experts of `intermediate_size` with biases and the clamped SwiGLU."""
    return MoEConfig(
        num_experts=int(_get(raw, "num_local_experts", _get(raw, "num_experts", 128))),
        top_k=int(_get(raw, "num_experts_per_tok", 4)),
        expert_intermediate_size=int(raw["intermediate_size"]),
        router=RouterConfig(scoring="topk_softmax", normalize=False, bias=True),
        sparse_layers=(True,) * num_layers,
        expert_bias=True,
        swiglu_limit=float(_get(raw, "swiglu_limit", 7.0)),
        swiglu_alpha=float(_get(raw, "swiglu_alpha", 1.702)),
    )


def deepseek_moe(raw: dict[str, Any], num_layers: int) -> MoEConfig:
    """DeepSeek-V3 / Kimi-K2: the first `first_k_dense_replace` layers dense, then every
    `moe_layer_freq`-th layer sparse, with the auxiliary-loss-free sigmoid router."""
    method = _get(raw, "topk_method", "noaux_tc")
    if method not in SUPPORTED_TOPK_METHODS:
        raise UnsupportedModelError(
            f"unsupported topk_method {method!r}; supported: {', '.join(SUPPORTED_TOPK_METHODS)}"
        )
    scoring = _get(raw, "scoring_func", "sigmoid")
    if scoring not in SUPPORTED_DEEPSEEK_SCORING:
        raise UnsupportedModelError(
            f"unsupported scoring_func {scoring!r}; supported: {', '.join(SUPPORTED_DEEPSEEK_SCORING)}"
        )
    first_sparse = int(_get(raw, "first_k_dense_replace", 3))
    frequency = int(_get(raw, "moe_layer_freq", 1))
    if frequency < 1:
        raise ModelFormatError(f"invalid model config: moe_layer_freq must be positive, got {frequency}")
    expert_inner = int(raw["moe_intermediate_size"])
    return MoEConfig(
        num_experts=int(_get(raw, "n_routed_experts", 256)),
        top_k=int(_get(raw, "num_experts_per_tok", 8)),
        expert_intermediate_size=expert_inner,
        router=RouterConfig(
            scoring="sigmoid",
            normalize=bool(_get(raw, "norm_topk_prob", True)),
            scaling_factor=float(_get(raw, "routed_scaling_factor", 2.5)),
            correction_bias=True,
            num_groups=int(_get(raw, "n_group", 8)),
            groups_chosen=int(_get(raw, "topk_group", 4)),
            float32=True,
        ),
        sparse_layers=tuple(index >= first_sparse and index % frequency == 0 for index in range(num_layers)),
        shared_intermediate_size=expert_inner * int(_get(raw, "n_shared_experts", 1)),
    )


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature for a context stretched `scale` times."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def latent_attention(raw: dict[str, Any], rope: RopeConfig) -> MLAConfig:
    """DeepSeek-V3's attention sizes, and its softmax scale as the checkpoint defines it."""
    q_lora = raw.get("q_lora_rank")
    nope, rope_dim = int(raw["qk_nope_head_dim"]), int(raw["qk_rope_head_dim"])
    scale = (nope + rope_dim) ** -0.5
    if rope.rope_type != "default" and rope.mscale_all_dim:
        mscale = yarn_mscale(rope.factor, rope.mscale_all_dim)
        scale = scale * mscale * mscale
    return MLAConfig(
        q_lora_rank=int(q_lora) if q_lora else None,
        kv_lora_rank=int(raw["kv_lora_rank"]),
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope_dim,
        v_head_dim=int(raw["v_head_dim"]),
        softmax_scale=scale,
        rope_interleave=bool(_get(raw, "rope_interleave", True)),
        bias=bool(_get(raw, "attention_bias", False)),
    )
