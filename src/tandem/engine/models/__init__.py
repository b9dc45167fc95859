"""Model families by `model_type`.

Llama, Mistral, Qwen2 and Qwen3 are one architecture with different switches, so they share
`llama.py`; a family whose blocks differ (mixture-of-experts, latent attention) gets its own file.
"""

from __future__ import annotations

from tandem.engine.models.llama import CausalLM
from tandem.engine.models.meta import on_meta
from tandem.model.config import ModelConfig
from tandem.model.stage import StageSpec

MODEL_CLASSES: dict[str, type[CausalLM]] = {
    "llama": CausalLM,
    "mistral": CausalLM,
    "qwen2": CausalLM,
    "qwen3": CausalLM,
}


def build_empty_model(config: ModelConfig, stage: StageSpec) -> CausalLM:
    """The module tree of one stage with parameters on the meta device (no memory, no init)."""
    with on_meta():
        return MODEL_CLASSES[config.model_type](config, stage)
