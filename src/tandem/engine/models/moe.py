"""The sparse feed-forward block shared by the mixture-of-experts families, and the decoder
layer and model around it.

`SparseMoE` is a router (`gate`) choosing `top_k` experts per token, the routed `experts` held
as stacked tensors (`gate_up_proj` [experts, 2 × inner, hidden], `down_proj` [experts, hidden,
inner]) so one kernel can gather the chosen ones, and optionally always-on `shared_experts` (a
gated MLP). Checkpoints store one tensor per expert; `SparseCausalLM.checkpoint_sources` tells
the loader which ones stack into each parameter, for the experts this process holds.

Under expert parallelism (`moe_tp.py`) a rank holds experts `[first, first + count)` of the
layer: it computes only their contributions (and its share of the shared experts), and the
block's output is a partial sum whose all-reduce is `partial`, owed to the norm after it.

The CPU path loops over the experts that got tokens, in expert order, as `transformers` does; on
CUDA the experts run through fused Triton kernels (`engine/cuda/moe.py`) with no host sync, so
decode steps can be captured in CUDA graphs. Quantized experts take the place of `Experts` at
load (`quant/experts.py`, `QuantizedExperts`): fused gather kernels over the compact banks at
decode (graph-safe too), the loop over the experts that got tokens for prefill and on CPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tandem.engine import ops
from tandem.engine.attention import AttentionBatch
from tandem.engine.checkpoint import StackedSource
from tandem.engine.models.llama import MLP, CausalLM, RMSNorm, _add_norm
from tandem.engine.parallel.group import AllReduce
from tandem.engine.parallel.layers import unsummed
from tandem.model.config import ModelConfig
from tandem.model.moe_config import RouterConfig

# Checkpoint names of one expert's gate, up and down projections.
HUB_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")
MIXTRAL_EXPERT_NAMES = ("w1", "w3", "w2")


class Router(nn.Module):
    """`gate` in checkpoints: a token's top-k experts and their weights (see `RouterConfig`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None
        self.settings: RouterConfig = moe.router
        self.top_k = moe.top_k
        self.weight = nn.Parameter(torch.empty(moe.num_experts, config.hidden_size))
        self.e_score_correction_bias = (
            nn.Parameter(torch.empty(moe.num_experts)) if moe.router.correction_bias else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, hidden]. Returns the weights ([N, k], float32) and the experts ([N, k])."""
        if self.settings.scoring == "softmax":
            logits = F.linear(x, self.weight.to(x.dtype))  # [N, experts]
            probabilities = torch.softmax(logits.float(), dim=-1)
            weights, experts = torch.topk(probabilities, self.top_k, dim=-1)
            if self.settings.normalize:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            return weights, experts
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # [N, experts]
        choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias
        if self.settings.num_groups > 1:
            choice = self._best_groups_only(choice)
        experts = torch.topk(choice, self.top_k, dim=-1, sorted=False)[1]  # [N, k]
        weights = scores.gather(1, experts)
        if self.settings.normalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.settings.scaling_factor, experts

    def _best_groups_only(self, choice: torch.Tensor) -> torch.Tensor:
        """Scores outside the `topk_group` best groups set to -inf; a group ranks by the sum of
        its two best scores."""
        groups = self.settings.num_groups
        grouped = choice.view(choice.shape[0], groups, -1)  # [N, groups, experts per group]
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)  # [N, groups]
        best = torch.topk(group_scores, self.settings.groups_chosen, dim=-1, sorted=False)[1]
        keep = torch.zeros_like(group_scores).scatter_(1, best, 1.0).bool()  # [N, groups]
        return grouped.masked_fill(~keep[:, :, None], float("-inf")).view_as(choice)


class Experts(nn.Module):
    """The routed experts this process holds, `[first, first + count)` of `num_experts`."""

    def __init__(self, config: ModelConfig, names: tuple[str, str, str] = HUB_EXPERT_NAMES) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None
        self.num_experts = moe.num_experts
        self.names = names
        self.round_weights = moe.router.round_weights
        self.hold(0, moe.num_experts, config.hidden_size, moe.expert_intermediate_size)

    def hold(self, first: int, count: int, hidden: int, inner: int) -> None:
        """Hold experts `[first, first + count)` (on whatever device the module is built on)."""
        self.first, self.count = first, count
        self.gate_up_proj = nn.Parameter(torch.empty(count, 2 * inner, hidden))
        self.down_proj = nn.Parameter(torch.empty(count, hidden, inner))

    def sources(self, prefix: str) -> dict[str, StackedSource]:
        """The checkpoint tensors of each held expert, stacked into this module's parameters."""
        gate, up, down = self.names
        held = range(self.first, self.first + self.count)
        rows = slice(self.first, self.first + self.count)
        return {
            f"{prefix}.gate_up_proj": StackedSource(
                tuple((f"{prefix}.{e}.{gate}.weight", f"{prefix}.{e}.{up}.weight") for e in held), rows
            ),
            f"{prefix}.down_proj": StackedSource(tuple((f"{prefix}.{e}.{down}.weight",) for e in held), rows),
        }

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: [N, hidden]; experts, weights: [N, k]. The weighted sum of the held experts'
        outputs for each token ([N, hidden]); experts held elsewhere contribute nothing here."""
        if ops.use_kernels(x):
            from tandem.engine.cuda.moe import fused_experts

            out = fused_experts(
                x, self.gate_up_proj, self.down_proj, experts, weights, self.first, self.round_weights
            )
            if out is not None:
                return out
        return self._loop(x, experts, weights)

    def _loop(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        local = experts - self.first  # [N, k]
        held = (local >= 0) & (local < self.count)
        for expert in torch.unique(local[held]).tolist():  # ascending, as transformers sums them
            slot, token = torch.where(local.T.eq(expert))
            product = ops.matmul(x[token], self.gate_up_proj[expert])  # [n, 2 * inner]
            y = ops.matmul(ops.silu_mul(product), self.down_proj[expert])  # [n, hidden]
            out.index_add_(0, token, weigh(y, weights[token, slot, None], self.round_weights))
        return out


def weigh(y: torch.Tensor, weight: torch.Tensor, round_weights: bool) -> torch.Tensor:
    """y times its routing weight (float32), rounded where the reference rounds: Qwen3-MoE rounds
    the weight to y's dtype first, the others round the float32 product."""
    if round_weights:
        return y * weight.to(y.dtype)
    return (y * weight).to(y.dtype)


class SparseMoE(nn.Module):
    """Router, routed experts and optional shared experts of one layer (see the module doc)."""

    def __init__(self, config: ModelConfig, names: tuple[str, str, str] = HUB_EXPERT_NAMES) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None
        self.gate = Router(config)
        self.experts = Experts(config, names)
        self.shared_experts = (
            MLP(config, moe.shared_intermediate_size) if moe.shared_intermediate_size else None
        )
        self.partial: AllReduce | None = None  # set by expert parallelism: the sum owed

    def fuse(self) -> None:
        if self.shared_experts is not None:
            self.shared_experts.fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, hidden]
        weights, experts = self.gate(flat)  # [N, k] each
        out = self.experts(flat, experts, weights)  # [N, hidden]
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape)


def owed_by(feed_forward: nn.Module) -> AllReduce | None:
    """The all-reduce still owed to a feed-forward's output (None: the output is whole)."""
    if isinstance(feed_forward, SparseMoE):
        return feed_forward.partial
    return unsummed(feed_forward.down_proj)  # type: ignore[arg-type]


class SparseDecoderLayer(nn.Module):
    """A decoder layer whose feed-forward may be sparse: input norm, attention, post-attention
    norm, then the feed-forward held under the checkpoint's name for it (`mlp`, or Mixtral's
    `block_sparse_moe`). Same conventions as `llama.DecoderLayer`."""

    def __init__(
        self, config: ModelConfig, attention: nn.Module, feed_forward: nn.Module, name: str = "mlp"
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = attention
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.feed_forward_name = name
        setattr(self, name, feed_forward)

    @property
    def feed_forward(self) -> nn.Module:
        return getattr(self, self.feed_forward_name)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        batch: AttentionBatch,
        kv_cache,
        owed: AllReduce | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, AllReduce | None]:
        """As `llama.DecoderLayer.forward`: x is the previous sublayer's output, not yet added to
        the residual (nor summed over the ranks when `owed`)."""
        normed, residual = _add_norm(self.input_layernorm, x, residual, owed)
        attention = self.self_attn(normed, batch, kv_cache)
        owed = unsummed(self.self_attn.o_proj)  # type: ignore[arg-type]
        normed, residual = _add_norm(self.post_attention_layernorm, attention, residual, owed)
        feed_forward = self.feed_forward
        return feed_forward(normed), residual, owed_by(feed_forward)


class SparseCausalLM(CausalLM):
    """`CausalLM` over `SparseDecoderLayer`s: the loader's stacked experts, the router's float32
    parameters, and fusing what each layer holds."""

    def supports_prefill_graphs(self) -> bool:
        return False  # a prompt's routing sizes the experts' grouped products on the host

    def sparse_blocks(self) -> dict[str, SparseMoE]:
        """Checkpoint prefix (`model.layers.N.mlp`) → the sparse block there, for held layers."""
        blocks = {}
        for index, layer in self.model.layers.items():
            assert isinstance(layer, SparseDecoderLayer)
            if isinstance(layer.feed_forward, SparseMoE):
                blocks[f"model.layers.{index}.{layer.feed_forward_name}"] = layer.feed_forward
        return blocks

    def checkpoint_sources(self) -> dict[str, StackedSource]:
        sources: dict[str, StackedSource] = {}
        for prefix, block in self.sparse_blocks().items():
            sources |= block.experts.sources(f"{prefix}.experts")
        return sources

    def float32_parameters(self) -> set[str]:
        names = set()
        for prefix, block in self.sparse_blocks().items():
            if block.gate.settings.float32:
                names.add(f"{prefix}.gate.weight")
                if block.gate.e_score_correction_bias is not None:
                    names.add(f"{prefix}.gate.e_score_correction_bias")
        return names

    def fuse_projections(self) -> None:
        for layer in self.model.layers.values():
            assert isinstance(layer, SparseDecoderLayer)
            layer.self_attn.fuse()  # type: ignore[operator]
            layer.feed_forward.fuse()  # type: ignore[operator]

    def activation_dtype(self) -> torch.dtype:
        return self.model.layers[next(iter(self.model.layers))].input_layernorm.weight.dtype  # type: ignore[union-attr]
