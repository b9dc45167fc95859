"""The baseline's model for a named shape: `transformers` with its own random weights (speed
does not depend on the values; the engine draws its own through the runner spec)."""

from __future__ import annotations

import torch


def transformers_model(raw_config: dict, device: torch.device, dtype: torch.dtype):
    """The `transformers` model of a shape, randomly initialized, in `dtype` on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(raw_config)
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(hf_config, dtype=dtype).eval()
