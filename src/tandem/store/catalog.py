"""The model catalog: cards for the models Tandem knows by a short id.

Each entry of `catalog.json` (package data) holds a Hugging Face repo and the shape-bearing
fields of that repo's `config.json`; every size on a card is derived from the config through
`tandem.model.shapes`, so the numbers are computed the same way placement computes them.
Pure Python: no torch, no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from tandem.model.config import engine_refusal
from tandem.model.shapes import ModelShape, shape_from_hf_config

CATALOG_PATH = Path(__file__).with_name("catalog.json")

# Bytes per parameter of the weights in each storage type a card reports.
WEIGHT_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float8": 1.0, "int4": 0.5}

EngineSupport = Literal["runs", "plans"]


@dataclass(frozen=True)
class ModelCard:
    """One catalog model. `engine` is "runs" when Tandem's engine runs it today, "plans" when
    placement can plan it but the engine cannot run it yet (`engine_refusal` says why: FP8
    weights, for instance)."""

    id: str
    repo: str
    gated: bool  # the repo asks for its license to be accepted (and a token) before downloads
    family: str  # the config's model_type
    parameters: int  # stored in the checkpoint, a tied head counted once
    active_parameters: int  # what one token uses (less than `parameters` for mixture-of-experts)
    layers: int
    context: int  # the config's max_position_embeddings
    checkpoint_dtype: str  # what the repo's weights are stored in: "bfloat16", "float8", ...
    config: dict[str, Any] = field(repr=False, compare=False)

    @property
    def engine(self) -> EngineSupport:
        return "runs" if self.engine_refusal is None else "plans"

    @property
    def engine_refusal(self) -> str | None:
        """Why the engine does not run this model (None: it does)."""
        return engine_refusal(self.config)

    @property
    def is_mixture_of_experts(self) -> bool:
        return self.active_parameters < self.parameters

    def weight_bytes(self, dtype: str) -> int:
        """Bytes of all weights stored as `dtype` (one of WEIGHT_BYTES)."""
        return int(self.parameters * WEIGHT_BYTES[dtype])

    @property
    def bytes_per_dtype(self) -> dict[str, int]:
        return {dtype: self.weight_bytes(dtype) for dtype in WEIGHT_BYTES}

    @property
    def download_bytes(self) -> int:
        """About what the repo's weight files hold (its checkpoint dtype; scales not counted)."""
        return self.weight_bytes(
            self.checkpoint_dtype if self.checkpoint_dtype in WEIGHT_BYTES else "bfloat16"
        )

    def shape(self) -> ModelShape:
        """What placement needs of this model, from the shipped config (nothing downloaded)."""
        return shape_from_hf_config(self.config, name=self.id)


def _checkpoint_dtype(config: dict[str, Any]) -> str:
    quantization = config.get("quantization_config") or {}
    if quantization.get("quant_method") == "fp8":
        return "float8"
    return str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")


def card_from_entry(entry: dict[str, Any]) -> ModelCard:
    config = entry["config"]
    shape = shape_from_hf_config(config, name=entry["id"])
    return ModelCard(
        id=entry["id"],
        repo=entry["repo"],
        gated=bool(entry.get("gated", False)),
        family=config["model_type"],
        parameters=shape.total_parameter_count(),
        active_parameters=shape.active_parameter_count(),
        layers=shape.num_layers,
        context=shape.max_context,
        checkpoint_dtype=_checkpoint_dtype(config),
        config=config,
    )


@cache
def catalog() -> tuple[ModelCard, ...]:
    """Every card, in the order of the catalog file (by family, then size)."""
    entries = json.loads(CATALOG_PATH.read_text())["models"]
    return tuple(card_from_entry(entry) for entry in entries)


def find_card(name: str) -> ModelCard | None:
    """The card whose id or repo is `name` (either matched without regard to case)."""
    wanted = name.lower()
    return next((c for c in catalog() if wanted in (c.id.lower(), c.repo.lower())), None)
