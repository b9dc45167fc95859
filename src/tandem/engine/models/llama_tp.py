"""The tensor-parallel plan of the Llama decoder (Llama, Mistral, Qwen2, Qwen3).

Per decoder layer (Megatron's split: two all-reduces a layer):
- attention: q_proj, k_proj, v_proj column-parallel by heads (rows of the weight, and of the
  Qwen2 biases); each rank computes attention for its own heads; o_proj row-parallel (columns of
  the weight) with one all-reduce. KV heads follow `attention_shard`: a rank holds the KV heads its
  query heads use, replicated when ranks outnumber them. Qwen3's q/k norms act on one head at a
  time (a weight of head_dim), so every rank holds them whole.
- MLP: gate_proj, up_proj column-parallel (rows), down_proj row-parallel (columns) with one
  all-reduce.
- Norms and the biases of row-parallel layers (added after the all-reduce) are held whole.
- Without a bias, a row-parallel layer leaves its all-reduce to the residual add and RMSNorm
  that follow it (every o_proj and down_proj output meets one), so a GPU runs the three as one
  kernel (`AllReduce.add_rms_norm`).
The embedding is split by vocabulary rows (masked lookup, one all-reduce); the head by vocabulary
rows too (an all-gather assembles the logits). A tied head and embedding split the same rows,
so a stage holding both keeps one copy, as without tensor parallelism.

`shard_llama` rewrites a model built on the meta device (before `fuse_projections`, which then
joins this rank's q/k/v and gate/up blocks) and returns, for every parameter it split, the block
of the checkpoint tensor that fills it: the loader reads only those blocks.
"""

from __future__ import annotations

from torch import nn

from tandem.engine.loader import TensorSlice
from tandem.engine.models.llama import MLP, Attention, CausalLM, DecoderLayer
from tandem.engine.models.meta import on_meta
from tandem.engine.parallel.group import TensorParallelGroup
from tandem.engine.parallel.layers import RowParallelLinear, VocabParallelEmbedding, VocabParallelHead
from tandem.engine.parallel.sharding import attention_shard, even_block, even_blocks


def shard_llama(model: CausalLM, group: TensorParallelGroup) -> dict[str, TensorSlice]:
    """Replace `model`'s projections (on the meta device) by this rank's shards; returns
    parameter name -> the block of its checkpoint tensor. Parameters not named are read whole."""
    config = model.config
    slices: dict[str, TensorSlice] = {}
    with on_meta():
        for index, layer in model.model.layers.items():
            assert isinstance(layer, DecoderLayer)
            prefix = f"model.layers.{index}"
            slices |= shard_attention(layer.self_attn, f"{prefix}.self_attn", group)
            slices |= shard_mlp(layer.mlp, f"{prefix}.mlp", config.intermediate_size, group)
        slices |= shard_ends(model, group)
    return slices


def shard_mlp(
    mlp: MLP, prefix: str, intermediate_size: int, group: TensorParallelGroup
) -> dict[str, TensorSlice]:
    """A gated MLP split Megatron's way: gate/up by rows, down by columns, its all-reduce left to
    the norm after it (when it has no bias). Call on the meta device."""
    assert mlp.gate_proj is not None, "apply tensor parallelism before fuse_projections"
    hidden, bias = mlp.gate_proj.in_features, mlp.gate_proj.bias is not None
    inner = even_block(intermediate_size, group.rank, group.size)
    slices: dict[str, TensorSlice] = {}
    for name in ("gate_proj", "up_proj"):
        setattr(mlp, name, nn.Linear(hidden, inner.size, bias=bias))
        slices |= _row_slices(f"{prefix}.{name}", slice(inner.start, inner.end), bias)
    mlp.down_proj = RowParallelLinear(inner.size, hidden, bias, group.all_reduce, sum_in_norm=not bias)  # type: ignore[assignment]
    slices[f"{prefix}.down_proj.weight"] = TensorSlice(columns=slice(inner.start, inner.end))
    return slices


def shard_ends(model: CausalLM, group: TensorParallelGroup) -> dict[str, TensorSlice]:
    """The embedding and the head split by vocabulary rows. Call on the meta device."""
    config, slices = model.config, {}
    vocab_blocks = even_blocks(config.vocab_size, group.size)
    vocab = vocab_blocks[group.rank]
    vocab_rows = TensorSlice(rows=slice(vocab.start, vocab.end))
    if model.model.embed_tokens is not None:
        embedding = VocabParallelEmbedding(vocab, config.hidden_size, group.all_reduce)
        model.model.embed_tokens = embedding  # type: ignore[assignment]
        slices["model.embed_tokens.weight"] = vocab_rows
    if model.lm_head is not None:
        sizes = tuple(block.size for block in vocab_blocks)
        model.lm_head = VocabParallelHead(config.hidden_size, vocab, sizes, group.all_gather)  # type: ignore[assignment]
        slices["lm_head.weight"] = vocab_rows
    return slices


def shard_attention(attention: Attention, prefix: str, group: TensorParallelGroup) -> dict[str, TensorSlice]:
    q_proj, k_proj = attention.q_proj, attention.k_proj
    if q_proj is None or k_proj is None:
        raise ValueError("apply tensor parallelism before fuse_projections: it splits q, k and v apart")
    head_dim, hidden = attention.head_dim, q_proj.in_features
    has_qkv_bias = q_proj.bias is not None
    num_heads = q_proj.out_features // head_dim
    num_kv_heads = k_proj.out_features // head_dim
    shard = attention_shard(num_heads, num_kv_heads, group.rank, group.size)
    query_rows = shard.query_heads.scaled(head_dim)
    kv_rows = shard.kv_row_blocks(head_dim)
    kv_width = len(shard.kv_heads) * head_dim
    attention.q_proj = nn.Linear(hidden, shard.query_heads.size * head_dim, bias=has_qkv_bias)
    attention.k_proj = nn.Linear(hidden, kv_width, bias=has_qkv_bias)
    attention.v_proj = nn.Linear(hidden, kv_width, bias=has_qkv_bias)
    attention.local_heads, attention.local_kv_heads = shard.query_heads.size, len(shard.kv_heads)
    has_o_bias = attention.o_proj.bias is not None
    attention.o_proj = RowParallelLinear(  # type: ignore[assignment]
        shard.query_heads.size * head_dim, hidden, has_o_bias, group.all_reduce, sum_in_norm=not has_o_bias
    )
    slices = _row_slices(f"{prefix}.q_proj", query_rows, has_qkv_bias)
    for name in ("k_proj", "v_proj"):
        slices |= _row_slices(f"{prefix}.{name}", kv_rows, has_qkv_bias)
    slices[f"{prefix}.o_proj.weight"] = TensorSlice(columns=query_rows)
    return slices


def _row_slices(module: str, rows: slice | tuple[slice, ...], bias: bool) -> dict[str, TensorSlice]:
    """A column-parallel projection holds rows of its weight and the same entries of its bias."""
    slices = {f"{module}.weight": TensorSlice(rows=rows)}
    if bias:
        slices[f"{module}.bias"] = TensorSlice(rows=rows)
    return slices
