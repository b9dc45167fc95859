"""Which weight files one pipeline stage needs, read from the checkpoint's index.

For the models the engine runs, the stage is built on the meta device (no memory, no weights)
and the checkpoint tensors it loads (tied heads, per-expert tensors) are looked up in the
index's weight map: the loader's own view of what it will read. For models the engine only
plans (quantized ones), tensors are assigned by their `model.layers.N.` prefix instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tandem.errors import ModelFormatError
from tandem.model.config import engine_refusal, read_config_json
from tandem.model.stage import StageSpec
from tandem.store.manifest import INDEX_FILE, is_weight_file

_LAYER_PREFIX = re.compile(r"^model\.layers\.(\d+)\.")
_HEAD_TENSORS = ("lm_head.", "model.norm.")


def read_weight_map(snapshot: Path) -> dict[str, str] | None:
    """Tensor name → file, from the index; None for a checkpoint without one (a single file)."""
    path = snapshot / INDEX_FILE
    if not path.is_file():
        return None
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise ModelFormatError(f"{INDEX_FILE} of {snapshot} is not a valid index") from None
    if not isinstance(weight_map, dict):
        raise ModelFormatError(f"{INDEX_FILE} of {snapshot} is not a valid index")
    return {str(k): str(v) for k, v in weight_map.items()}


def stage_weight_files(snapshot: Path, stage: StageSpec | None, known_files: set[str]) -> set[str]:
    """The weight files of `stage` (every weight file when None). `snapshot` must hold config.json
    and, for a sharded checkpoint, the index; `known_files` are the repo's file names."""
    weight_map = read_weight_map(snapshot)
    if weight_map is None:
        return {name for name in known_files if is_weight_file(name)}
    if stage is None:
        return set(weight_map.values())
    config = read_config_json(snapshot / "config.json")
    if engine_refusal(config) is None:
        names = _engine_tensor_names(snapshot, stage)
    else:
        names = [name for name in weight_map if _by_prefix(name, stage)]
    return {weight_map[name] for name in names if name in weight_map}


def _engine_tensor_names(snapshot: Path, stage: StageSpec) -> list[str]:
    from tandem.engine.affine import open_checkpoint  # torch: only where the engine's view is needed
    from tandem.engine.loader import stage_tensor_names
    from tandem.engine.models import build_empty_model
    from tandem.model.config import load_model_config

    config = load_model_config(snapshot)
    if stage.num_layers != config.num_layers:
        raise ModelFormatError(f"the model has {config.num_layers} layers, not {stage.num_layers}")
    return stage_tensor_names(build_empty_model(config, stage), config, open_checkpoint(snapshot))


def _by_prefix(name: str, stage: StageSpec) -> bool:
    match = _LAYER_PREFIX.match(name)
    if match:
        return int(match.group(1)) in stage.layers
    if name.startswith(_HEAD_TENSORS):
        return stage.is_last
    return stage.is_first or "embed" not in name  # the embedding on the first stage; the rest everywhere
