"""Qwen3-MoE: Qwen3's attention (per-head q/k RMSNorm) with sparse feed-forwards on the layers
`decoder_sparse_step` and `mlp_only_layers` leave sparse, dense MLPs of `intermediate_size` on
the others. Checkpoint names: `model.layers.N.mlp.gate`, `….mlp.experts.E.gate_proj/up_proj/down_proj`."""

from __future__ import annotations

from tandem.engine.models.llama import MLP, Attention
from tandem.engine.models.moe import SparseCausalLM, SparseDecoderLayer, SparseMoE
from tandem.model.config import ModelConfig


class Qwen3MoeDecoderLayer(SparseDecoderLayer):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        feed_forward = SparseMoE(config) if config.is_sparse_layer(layer_index) else MLP(config)
        super().__init__(config, Attention(config, layer_index), feed_forward)


class Qwen3MoeForCausalLM(SparseCausalLM):
    layer_class = Qwen3MoeDecoderLayer
