"""Sentence embeddings from a whole model held by one process: the final hidden states of the
input (after the final norm), pooled and normalised as the checkpoint declares
(`tandem.model.pooling`).

Each input runs as one prompt through a small KV cache of its own, so embedding never takes a
slot from the requests the engine is generating for.
"""

from __future__ import annotations

import torch

from tandem.engine.blocks import blocks_for
from tandem.engine.kv_cache import KVCache
from tandem.engine.models.llama import CausalLM
from tandem.errors import InvalidRequestError
from tandem.model.pooling import Pooling


def pool(hidden: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """hidden: [T, hidden] of one input -> [hidden], in float32."""
    hidden = hidden.float()
    if pooling.mode == "last":
        vector = hidden[-1]
    elif pooling.mode == "cls":
        vector = hidden[0]
    else:
        vector = hidden.mean(dim=0)
    return torch.nn.functional.normalize(vector, dim=0) if pooling.normalize else vector


class Embedder:
    def __init__(self, model: CausalLM, pooling: Pooling, max_context: int) -> None:
        if not (model.stage.is_first and model.stage.is_last):
            raise ValueError("embeddings need the whole model in one process")
        self.model = model
        self.pooling = pooling
        self.max_context = max_context
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def embed(self, token_ids: list[int]) -> list[float]:
        """One input's embedding. Raises InvalidRequestError for an empty or too long input."""
        length = len(token_ids)
        if not token_ids:
            raise InvalidRequestError("the input is empty")
        if length > self.max_context:
            raise InvalidRequestError(
                f"the input has {length} tokens, but the context holds {self.max_context}; shorten it"
            )
        num_blocks = blocks_for(length)
        cache = KVCache.for_model(self.model, num_blocks)
        positions = torch.arange(length, device=self.device)[None, :]  # [1, T]
        block_table = torch.arange(num_blocks, device=self.device)[None, :]  # [1, W]: its own blocks
        batch = self.model.attention_batch(positions, block_table, kv_length=length, prompt_from_start=True)
        inputs = torch.tensor([token_ids], dtype=torch.long, device=self.device)  # [1, T]
        hidden = self.model(inputs, batch, cache, None, with_head=False)  # [T, hidden]
        return pool(hidden, self.pooling).tolist()
