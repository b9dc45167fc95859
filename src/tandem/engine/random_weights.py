"""Random weights for a stage built on the meta device: the benchmark's shapes need no
checkpoint. Speed does not depend on the values; normal(0, 0.02) keeps activations finite."""

from __future__ import annotations

import torch

from tandem.engine.models.llama import CausalLM


def fill_random(model: CausalLM, device: torch.device, dtype: torch.dtype, seed: int) -> CausalLM:
    """Materialize a meta-device model (or a rank's shard) on `device` in `dtype` with random
    weights (unit norms), then fuse its projections, as loading a checkpoint would."""
    model = model.to(dtype).to_empty(device=device)  # in `dtype` from the start: no float32 copy
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    model.reset_buffers(device)
    model.fuse_projections()
    return model.eval()
