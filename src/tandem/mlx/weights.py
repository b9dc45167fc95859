"""Load one stage onto MLX, reading only the tensors that stage owns.

The checkpoint's index and headers come from `engine/checkpoint.py` (one weight map, every file
checked against its size before it is mapped). `mx.load` maps a safetensors file lazily: a
tensor's bytes are read only when it is evaluated, so a stage's memory holds its share and no
more. MLX affine-quantized checkpoints (`affine.py` describes them) load as mlx's
QuantizedLinear and QuantizedEmbedding, exactly as mlx-lm loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from tandem.engine.affine import AffineScheme, read_affine_scheme
from tandem.engine.checkpoint import Checkpoint, read_header
from tandem.errors import ModelFormatError
from tandem.mlx.model import StageModel
from tandem.model.config import ModelConfig, load_model_config, read_config_json
from tandem.model.stage import StageSpec

TIED_HEAD = ("lm_head", "model.embed_tokens")


class TensorSource(Protocol):
    """Tensors by checkpoint name: a checkpoint on disk, or weights held in memory (the bench)."""

    def __contains__(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str) -> mx.array: ...


class StageTensors:
    """Tensors of one checkpoint by name, as lazily loaded MLX arrays."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self.weight_map = Checkpoint(self.model_dir).weight_map
        self._headers: dict[Path, dict[str, Any]] = {}
        self._files: dict[Path, dict[str, mx.array]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _entry(self, name: str) -> tuple[Path, dict[str, Any]]:
        path = self.weight_map.get(name)
        if path is None:
            raise ModelFormatError(f"tensor {name} is missing from the checkpoint in {self.model_dir}")
        if path not in self._headers:
            if not path.is_file():
                raise ModelFormatError(f"missing weight file {path.name} in {self.model_dir}")
            self._headers[path] = read_header(path)
        entry = self._headers[path].get(name)
        if entry is None:
            raise ModelFormatError(f"tensor {name} is listed in the index but missing from {path.name}")
        return path, entry

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)[1]["shape"])

    def read(self, name: str) -> mx.array:
        path, _ = self._entry(name)
        if path not in self._files:
            try:
                # lazy: nothing is read yet
                self._files[path] = cast(dict[str, mx.array], mx.load(str(path)))
            except (RuntimeError, ValueError) as error:
                raise ModelFormatError(f"cannot open {path.name}: {error}") from None
        return self._files[path][name]


def source_name(model: StageModel, path: str, tensors: TensorSource) -> str:
    """The checkpoint tensor that fills a stage's module or parameter `path` (a tied head
    reads the embedding)."""
    name = model.checkpoint_name(path)
    head, embedding = TIED_HEAD
    if name.startswith(head) and f"{head}.weight" not in tensors and model.config.tie_word_embeddings:
        return embedding + name[len(head) :]
    return name


def quantize_like_checkpoint(model: StageModel, tensors: TensorSource, scheme: AffineScheme) -> None:
    """Turn into quantized layers the Linear and Embedding modules whose checkpoint holds scales,
    with the bits and group size config.json gives them."""

    def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
        name = source_name(model, path, tensors)
        if not hasattr(module, "to_quantized") or f"{name}.scales" not in tensors:
            return False
        params = scheme.params_for(name)
        if params is None:
            raise ModelFormatError(f"{name} has scales, but config.json lists it as not quantized")
        return {"group_size": params.group_size, "bits": params.bits, "mode": "affine"}

    nn.quantize(model, class_predicate=predicate)


def load_weights(model: StageModel, tensors: TensorSource, dtype: mx.Dtype) -> None:
    """Fill every parameter of `model` from the checkpoint (float ones cast to `dtype`; packed
    codes kept as stored), checking each shape against what the config implies."""
    loaded = []
    for path, empty in cast(list[tuple[str, mx.array]], tree_flatten(model.parameters())):
        name = source_name(model, path, tensors)
        shape = tensors.shape(name)
        if shape != tuple(empty.shape):
            raise ModelFormatError(
                f"tensor {name} has shape {shape} in the checkpoint, but the config implies "
                f"{tuple(empty.shape)}"
            )
        array = tensors.read(name)
        if mx.issubdtype(array.dtype, mx.floating):
            array = array.astype(dtype)
        elif array.dtype != empty.dtype:
            raise ModelFormatError(
                f"tensor {name} is {array.dtype} in the checkpoint, expected {empty.dtype}"
            )
        loaded.append((path, array))
    model.load_weights(loaded, strict=True)
    mx.eval(model.parameters())  # read now: a stage's memory is taken at load


def load_mlx_stage(
    model_dir: str | Path, stage: StageSpec | None, dtype: mx.Dtype, config: ModelConfig | None = None
) -> StageModel:
    """Load layers `stage.layers` (plus embedding and/or head for end stages; the whole model
    when `stage` is None) onto MLX. Only the owned tensors are read from disk."""
    model_dir = Path(model_dir)
    config = config or load_model_config(model_dir)
    scheme = read_affine_scheme(read_config_json(model_dir / "config.json"))
    return build_stage(
        config, stage or StageSpec.whole(config.num_layers), StageTensors(model_dir), dtype, scheme
    )


def build_stage(
    config: ModelConfig, stage: StageSpec, tensors: TensorSource, dtype: mx.Dtype, scheme: AffineScheme | None
) -> StageModel:
    """A stage filled from `tensors` (quantized where `scheme` and the stored scales say)."""
    model = StageModel(config, stage)
    if scheme is not None:
        quantize_like_checkpoint(model, tensors, scheme)
    load_weights(model, tensors, dtype)
    model.eval()
    return model


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters the stage holds (packed codes, scales and biases as stored)."""
    arrays = cast(list[tuple[str, mx.array]], tree_flatten(model.parameters()))
    return sum(array.nbytes for _, array in arrays)
