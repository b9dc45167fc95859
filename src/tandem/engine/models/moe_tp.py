"""The parallel plan of the mixture-of-experts families (Mixtral, Qwen3-MoE, DeepSeek-V3,
Kimi-K2) inside one stage's group of ranks: expert parallelism for the routed experts, tensor
parallelism for the rest.

Per decoder layer:
- attention as in `llama_tp` (heads split, o_proj row-parallel). Latent attention splits by
  heads too: q_proj / q_b_proj and kv_b_proj by the rows of a rank's heads, o_proj by their
  columns; the low-rank projections in front (q_a_proj, kv_a_proj_with_mqa) and their norms
  make one latent every head shares, so every rank holds them whole, and every rank keeps the
  whole compressed cache (it is already small: that is the point of it).
- a sparse block: each rank holds whole experts, a contiguous near-equal block of them (8
  experts over 3 ranks: 3, 3, 2), reads only those from the checkpoint, and computes only their
  contributions for the tokens routed to them; the router is held whole (every rank routes
  every token alike); shared experts and dense MLPs split Megatron's way. The block's output is
  then a partial sum on every rank, and one all-reduce (left to the norm after it) sums
  routed and shared contributions at once.
- No all-to-all: after the attention all-reduce every rank of the group already holds every
  token's hidden state, so each rank routes them all and keeps only its experts' work; the
  all-reduce that follows any row-parallel layer does the combining.
The embedding and the head split by vocabulary rows, as in `llama_tp`.
"""

from __future__ import annotations

from torch import nn

from tandem.engine.loader import TensorSlice
from tandem.engine.models.deepseek_v3 import LatentAttention
from tandem.engine.models.llama import MLP, Attention, CausalLM
from tandem.engine.models.llama_tp import _row_slices, shard_attention, shard_ends, shard_mlp
from tandem.engine.models.meta import on_meta
from tandem.engine.models.moe import SparseCausalLM, SparseDecoderLayer, SparseMoE
from tandem.engine.parallel.group import TensorParallelGroup
from tandem.engine.parallel.layers import RowParallelLinear
from tandem.engine.parallel.sharding import even_block
from tandem.errors import InvalidRequestError
from tandem.model.config import ModelConfig


def shard_mixture(model: CausalLM, group: TensorParallelGroup) -> dict[str, TensorSlice]:
    """Replace `model`'s layers (on the meta device) by this rank's shards; returns parameter
    name -> the block of its checkpoint tensor. Experts need no block: a rank's `Experts` names
    the per-expert tensors it holds (`checkpoint_sources`)."""
    assert isinstance(model, SparseCausalLM)
    config = model.config
    slices: dict[str, TensorSlice] = {}
    with on_meta():
        for index, layer in model.model.layers.items():
            assert isinstance(layer, SparseDecoderLayer)
            prefix = f"model.layers.{index}"
            attention = layer.self_attn
            if isinstance(attention, LatentAttention):
                slices |= shard_latent_attention(attention, f"{prefix}.self_attn", config, group)
            else:
                assert isinstance(attention, Attention)
                slices |= shard_attention(attention, f"{prefix}.self_attn", group)
            feed_forward, name = layer.feed_forward, f"{prefix}.{layer.feed_forward_name}"
            if isinstance(feed_forward, SparseMoE):
                slices |= shard_sparse(feed_forward, name, config, group)
            else:
                assert isinstance(feed_forward, MLP)
                slices |= shard_mlp(feed_forward, name, config.intermediate_size, group)
        slices |= shard_ends(model, group)
    return slices


def shard_sparse(
    block: SparseMoE, prefix: str, config: ModelConfig, group: TensorParallelGroup
) -> dict[str, TensorSlice]:
    """This rank's experts, its share of the shared experts, and the all-reduce owed."""
    moe = config.moe
    assert moe is not None
    if group.size > moe.num_experts:
        raise InvalidRequestError(
            f"expert parallelism over {group.size} ranks needs at least {group.size} experts a layer; "
            f"the model has {moe.num_experts}"
        )
    experts = even_block(moe.num_experts, group.rank, group.size)
    block.experts.hold(experts.start, experts.size, config.hidden_size, moe.expert_intermediate_size)
    slices: dict[str, TensorSlice] = {}
    if block.shared_experts is not None:
        slices |= shard_mlp(
            block.shared_experts, f"{prefix}.shared_experts", moe.shared_intermediate_size, group
        )
    block.partial = group.all_reduce
    return slices


def shard_latent_attention(
    attention: LatentAttention, prefix: str, config: ModelConfig, group: TensorParallelGroup
) -> dict[str, TensorSlice]:
    mla = attention.mla
    if group.size > config.num_attention_heads:
        raise InvalidRequestError(
            f"tensor parallelism over {group.size} ranks needs at least {group.size} attention heads; "
            f"the model has {config.num_attention_heads}"
        )
    heads = even_block(config.num_attention_heads, group.rank, group.size)
    query_rows = heads.scaled(mla.qk_head_dim)
    slices: dict[str, TensorSlice] = {}
    if attention.q_proj is not None:
        attention.q_proj = nn.Linear(config.hidden_size, heads.size * mla.qk_head_dim, bias=False)
        slices |= _row_slices(f"{prefix}.q_proj", query_rows, bias=False)
    else:
        assert mla.q_lora_rank is not None
        attention.q_b_proj = nn.Linear(mla.q_lora_rank, heads.size * mla.qk_head_dim, bias=False)
        slices |= _row_slices(f"{prefix}.q_b_proj", query_rows, bias=False)
    per_head = mla.qk_nope_head_dim + mla.v_head_dim
    attention.kv_b_proj = nn.Linear(mla.kv_lora_rank, heads.size * per_head, bias=False)
    slices |= _row_slices(f"{prefix}.kv_b_proj", heads.scaled(per_head), bias=False)
    attention.o_proj = RowParallelLinear(  # type: ignore[assignment]
        heads.size * mla.v_head_dim, config.hidden_size, mla.bias, group.all_reduce, sum_in_norm=not mla.bias
    )
    slices[f"{prefix}.o_proj.weight"] = TensorSlice(columns=heads.scaled(mla.v_head_dim))
    attention.local_heads = heads.size
    return slices
