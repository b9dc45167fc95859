"""The models this node can launch, with their size and whether each fits the cluster now.

Sources, in order: the bundled demo model, then every checkpoint directory under the node's
`--models-dir` folders (`MODEL_SOURCES`, each yielding `LocalModel`s), then the catalog's cards
(`describe_card`: sizes and fit from the shipped config, whether downloaded or not).

A checkpoint directory is one that holds `config.json` and at least one `.safetensors` file.
A launch names the model by its `name` (the directory's path), which must exist at the same
path on every node that will hold a stage, as for any launch.

A request may name a directory only if it is one of these (`check_requested_model`): never an
arbitrary path, and the refusal reads the same whether or not the path exists. The node that
takes the request checks; the coordinator trusts a member's signed forward, so a directory one
member offers launches even when the coordinator offers none.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tandem.cluster.placement import Infeasible, Placement
from tandem.errors import InvalidRequestError, TandemError
from tandem.model.config import load_model_config
from tandem.model.image_config import is_image_model_dir, load_image_model_config
from tandem.model.shapes import ModelShape
from tandem.protocol.control import LaunchRequest
from tandem.store.catalog import ModelCard
from tandem.store.names import parse_model_name
from tandem.store.resolve import DEMO_MODEL_DIR, DEMO_MODEL_NAME, local_status

ModelSourceKind = Literal["bundled", "directory", "catalog"]


@dataclass(frozen=True)
class LocalModel:
    """A model the node can name in a launch request."""

    name: str  # what a launch request says: "demo", or the checkpoint directory's path
    label: str  # a short name for people
    source: ModelSourceKind
    path: Path


@dataclass(frozen=True)
class ModelListing:
    """What the dashboard shows for one model; sizes in bytes."""

    name: str
    label: str
    source: ModelSourceKind
    path: str
    architecture: str | None = None
    parameters: int | None = None
    file_bytes: int | None = None  # the safetensors files on disk
    layers: int | None = None
    max_context: int | None = None
    fits: bool = False
    predicted_tokens_per_second: float | None = None  # of the placement a launch would get now
    reason: str | None = None  # why it does not fit, or why it cannot be read
    downloaded: bool = True  # a catalog model is fetched on launch when this node lacks it


def is_checkpoint_dir(path: Path) -> bool:
    """A text model's checkpoint, or an image model's in diffusers' layout (model_index.json)."""
    return ((path / "config.json").is_file() and any(path.glob("*.safetensors"))) or is_image_model_dir(path)


def bundled_models(_: tuple[Path, ...]) -> Iterator[LocalModel]:
    yield LocalModel(DEMO_MODEL_NAME, DEMO_MODEL_NAME, "bundled", DEMO_MODEL_DIR)


def directory_models(models_dirs: tuple[Path, ...]) -> Iterator[LocalModel]:
    """Each folder given, if it is a checkpoint itself, and each checkpoint directly inside it."""
    for folder in models_dirs:
        folder = folder.expanduser().resolve()
        candidates = [folder] if is_checkpoint_dir(folder) else []
        if folder.is_dir():
            candidates += sorted(child for child in folder.iterdir() if child.is_dir())
        for path in candidates:
            if is_checkpoint_dir(path):
                yield LocalModel(str(path), path.name, "directory", path)


MODEL_SOURCES: list[Callable[[tuple[Path, ...]], Iterable[LocalModel]]] = [bundled_models, directory_models]


def check_requested_model(name: str, models_dirs: tuple[Path, ...]) -> None:
    """Refuse a request's model name unless it is 'demo', a catalog or repo id (the cache and the
    Hub), or a checkpoint directory this node offers from its `--models-dir` folders. The error is
    the same for every other path, existing or not, so requests cannot probe the file system."""
    parsed = parse_model_name(name, relative_paths=False)
    if parsed.kind != "directory":
        return
    offered = {model.name for model in directory_models(models_dirs)}
    if os.path.normpath(os.path.expanduser(name.strip())) not in offered:
        raise InvalidRequestError(
            f"model {name.strip()[:200]!r} is not offered by this node: name 'demo', a catalog id, a Hugging "
            "Face repo id, or a checkpoint directory under one of its --models-dir folders "
            "(GET /v1/cluster/models lists them)"
        )


def describe_card(
    card: ModelCard, plan_shape: Callable[[ModelShape, LaunchRequest], Placement | Infeasible]
) -> ModelListing:
    """A catalog model: sizes from its shipped config, the fit from its shape (nothing downloaded)."""
    held = local_status(card.repo) == "complete"
    listing = ModelListing(
        name=card.id,
        label=card.id,
        source="catalog",
        path=card.repo,
        architecture=card.family,
        parameters=card.parameters,
        file_bytes=card.download_bytes,
        layers=card.layers,
        max_context=card.context,
        downloaded=held,
    )
    if card.engine_refusal is not None:
        return replace(
            listing, reason=f"placement plans this model; the engine does not run it: {card.engine_refusal}"
        )
    placement = plan_shape(card.shape(), LaunchRequest(card.id))
    if isinstance(placement, Infeasible):
        return replace(listing, reason=placement.reason)
    return replace(listing, fits=True, predicted_tokens_per_second=placement.predicted_tokens_per_second)


def find_models(models_dirs: tuple[Path, ...]) -> list[LocalModel]:
    """Every model the sources offer, once each (the first source to name a model wins)."""
    seen: dict[str, LocalModel] = {}
    for source in MODEL_SOURCES:
        for model in source(models_dirs):
            seen.setdefault(model.name, model)
    return list(seen.values())


def describe_model(
    model: LocalModel, plan: Callable[[LaunchRequest], Placement | Infeasible]
) -> ModelListing:
    """The model's size from its config and files, and whether `plan` finds room for it now."""
    listing = ModelListing(model.name, model.label, model.source, str(model.path))
    try:
        listing = (
            image_listing(listing, model.path)
            if is_image_model_dir(model.path)
            else text_listing(listing, model.path)
        )
    except TandemError as error:
        return replace(listing, reason=str(error))
    try:
        placement = plan(LaunchRequest(model.name))
    except TandemError as error:
        return replace(listing, reason=str(error))
    if isinstance(placement, Infeasible):
        return replace(listing, reason=placement.reason)
    return replace(listing, fits=True, predicted_tokens_per_second=placement.predicted_tokens_per_second)


def text_listing(listing: ModelListing, path: Path) -> ModelListing:
    config = load_model_config(path)
    return replace(
        listing,
        architecture=config.model_type,
        parameters=config.total_parameter_count(),
        file_bytes=sum(file.stat().st_size for file in path.glob("*.safetensors")),
        layers=config.num_layers,
        max_context=config.max_position_embeddings,
    )


def image_listing(listing: ModelListing, path: Path) -> ModelListing:
    """An image model: its transformer's blocks as the layers (what placement splits)."""
    config = load_image_model_config(path)
    transformer = config.transformer
    return replace(
        listing,
        architecture=f"flux-{config.variant}",
        parameters=transformer.total_parameter_count(),
        file_bytes=sum(file.stat().st_size for file in path.glob("*/*.safetensors")),
        layers=transformer.num_blocks,
    )
