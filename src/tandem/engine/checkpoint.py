"""Reading tensors by name from a Hugging Face safetensors checkpoint, one file or sharded.

Files are memory-mapped and only the tensors asked for are read. Every file's header is checked
against its size first: reading a truncated file through a memory map would crash the process.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from tandem.errors import ModelFormatError

INDEX_FILE = "model.safetensors.index.json"
# diffusers names the index of a sharded part (transformer/, vae/) after its weights file
INDEX_FILES = (INDEX_FILE, "diffusion_pytorch_model.safetensors.index.json")


@dataclass(frozen=True)
class StackedSource:
    """A parameter stacked along its first dimension from several checkpoint tensors: entry i
    concatenates the rows of `parts[i]`. Experts held as [experts, rows, columns] come so from
    the Hub's one tensor per expert (`model.layers.3.mlp.experts.7.gate_proj.weight`, ...). A
    checkpoint that already holds the stacked tensor under the parameter's own name (as
    transformers holds experts in memory) is read by `rows`, the block of it this parameter is."""

    parts: tuple[tuple[str, ...], ...]
    rows: slice


_SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,  # MLX's packed quantized weights
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, after checking the file holds all the data it lists."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelFormatError(f"{path.name} is truncated or not a safetensors file ({size} bytes)")
            (header_length,) = struct.unpack("<Q", prefix)
            if header_length > size - 8:
                raise ModelFormatError(f"{path.name} is truncated: its header runs past the end of the file")
            header = json.loads(handle.read(header_length))
    except OSError as error:
        raise ModelFormatError(f"cannot read {path}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFormatError(f"{path.name} is not a safetensors file (bad header)") from None
    data_end = max(
        (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0
    )
    if 8 + header_length + data_end > size:
        raise ModelFormatError(
            f"{path.name} is truncated: it holds {size} bytes but its header lists "
            f"{8 + header_length + data_end}"
        )
    return header


class Checkpoint:
    """Tensor names → files of one checkpoint directory, with lazily opened memory maps."""

    # Whether a module's weight is stored with other tensors of its own (scales, biases) that
    # this view reads with it, so a stage's download must fetch them too.
    has_companion_tensors = False

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self._headers: dict[Path, dict[str, Any]] = {}
        self.weight_map: dict[str, Path] = self._build_weight_map()
        self._handles: dict[Path, Any] = {}

    def _build_weight_map(self) -> dict[str, Path]:
        for index_file in INDEX_FILES:
            index_path = self.model_dir / index_file
            if not index_path.is_file():
                continue
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
                raise ModelFormatError(f"{index_file} in {self.model_dir} is not a valid index") from None
            return {name: self.model_dir / file for name, file in weight_map.items()}
        files = sorted(self.model_dir.glob("*.safetensors"))
        if not files:
            raise ModelFormatError(f"no *.safetensors files in {self.model_dir}")
        weight_map: dict[str, Path] = {}
        for path in files:
            for name in self._header(path):
                if name != "__metadata__":
                    weight_map[name] = path
        return weight_map

    def _header(self, path: Path) -> dict[str, Any]:
        if path not in self._headers:
            if not path.is_file():
                raise ModelFormatError(f"missing weight file {path.name} in {self.model_dir}")
            self._headers[path] = read_header(path)
        return self._headers[path]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def files_for(self, names: list[str]) -> set[Path]:
        """The files holding `names` (what a stage must have on disk)."""
        return {self.weight_map[name] for name in names if name in self.weight_map}

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)["shape"])

    def _entry(self, name: str) -> dict[str, Any]:
        path = self.weight_map.get(name)
        if path is None:
            raise ModelFormatError(f"tensor {name} is missing from the checkpoint in {self.model_dir}")
        entry = self._header(path).get(name)
        if entry is None:
            raise ModelFormatError(f"tensor {name} is listed in the index but missing from {path.name}")
        if entry.get("dtype") not in _SAFETENSORS_DTYPE_BYTES:
            raise ModelFormatError(f"tensor {name} has unsupported dtype {entry.get('dtype')}")
        return entry

    def read(self, name: str, rows: slice | None = None, columns: slice | None = None) -> torch.Tensor:
        """Read a tensor, or only a block of its rows/columns (for tensor-parallel shards)."""
        self._entry(name)  # validates presence and the file's integrity before mapping it
        path = self.weight_map[name]
        handle = self._handles.get(path)
        if handle is None:
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as error:  # safetensors raises its own error type for corrupt files
                raise ModelFormatError(f"cannot open {path.name}: {error}") from None
            self._handles[path] = handle
        if rows is None and columns is None:
            return handle.get_tensor(name)
        view = handle.get_slice(name)
        rows = rows or slice(None)
        return view[rows] if columns is None else view[rows, columns]

    def close(self) -> None:
        self._handles.clear()
