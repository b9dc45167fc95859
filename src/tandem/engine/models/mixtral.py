"""Mixtral: Mistral's attention (grouped queries, an optional sliding window) with every
feed-forward a sparse block of `num_local_experts` experts, `num_experts_per_tok` per token,
under the checkpoint's names (`model.layers.N.block_sparse_moe.gate`, `….experts.E.w1/w2/w3`:
gate, down and up)."""

from __future__ import annotations

from tandem.engine.models.llama import Attention
from tandem.engine.models.moe import MIXTRAL_EXPERT_NAMES, SparseCausalLM, SparseDecoderLayer, SparseMoE
from tandem.model.config import ModelConfig


class MixtralDecoderLayer(SparseDecoderLayer):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__(
            config,
            Attention(config, layer_index),
            SparseMoE(config, MIXTRAL_EXPERT_NAMES),
            name="block_sparse_moe",
        )


class MixtralForCausalLM(SparseCausalLM):
    layer_class = MixtralDecoderLayer
