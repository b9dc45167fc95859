"""The baseline's model for a named shape: `transformers` with its own random weights (speed
does not depend on the values; the engine draws its own through the runner spec)."""

from __future__ import annotations

import torch


def transformers_model(raw_config: dict, device: torch.device, dtype: torch.dtype):
    """The `transformers` model of a shape, randomly initialized, in `dtype` on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(raw_config)
    model_type = config.pop("model_type")
    # transformers knows Kimi-K2 by its architecture, DeepSeek-V3's.
    hf_config = AutoConfig.for_model("deepseek_v3" if model_type == "kimi_k2" else model_type, **config)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(hf_config, dtype=dtype).eval()
