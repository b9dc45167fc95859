"""Model families by `model_type`.

Llama, Mistral, Qwen2 and Qwen3 are one architecture with different switches, so they share
`llama.py`; a family whose blocks differ gets its own file: Mixtral (`mixtral.py`), Qwen3-MoE
(`qwen3_moe.py`), gpt-oss (`gpt_oss.py`: attention sinks, its own router and experts), DeepSeek-V3 and Kimi-K2, which is DeepSeek-V3's architecture
(`deepseek_v3.py`), around the sparse block of `moe.py`.
"""

from __future__ import annotations

from tandem.engine.models.deepseek_v3 import DeepseekV3ForCausalLM
from tandem.engine.models.gpt_oss import GptOssForCausalLM
from tandem.engine.models.llama import CausalLM
from tandem.engine.models.meta import on_meta
from tandem.engine.models.mixtral import MixtralForCausalLM
from tandem.engine.models.qwen3_moe import Qwen3MoeForCausalLM
from tandem.errors import UnsupportedModelError
from tandem.model.config import ModelConfig, unsupported_quantization
from tandem.model.stage import StageSpec

MODEL_CLASSES: dict[str, type[CausalLM]] = {
    "llama": CausalLM,
    "mistral": CausalLM,
    "qwen2": CausalLM,
    "qwen3": CausalLM,
    "mixtral": MixtralForCausalLM,
    "qwen3_moe": Qwen3MoeForCausalLM,
    "deepseek_v3": DeepseekV3ForCausalLM,
    "kimi_k2": DeepseekV3ForCausalLM,
    "gpt_oss": GptOssForCausalLM,
}


def build_empty_model(config: ModelConfig, stage: StageSpec) -> CausalLM:
    """The module tree of one stage with parameters on the meta device (no memory, no init)."""
    refusal = unsupported_quantization(config)
    if refusal is not None:
        raise UnsupportedModelError(refusal)
    with on_meta():
        return MODEL_CLASSES[config.model_type](config, stage)
