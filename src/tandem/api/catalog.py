"""The models this cluster can serve by name: what the model lists show beside running instances,
and what a request may name to have an instance launched for it.

A request may name the bundled `demo`, a catalog id (`tandem models`) or a Hugging Face repo id
(`ORG/NAME`, optionally `@REVISION`): a model that is not running is launched the way `tandem run`
launches it (placement, then every node fetches its stage's files). The lists show `demo` and the
repos downloaded completely to this node (`tandem download`, `ollama pull`).

Checkpoint directories are not launched by a request that names them (a request must not make
the node read arbitrary paths): launch them explicitly with `POST /v1/instances`, then name them
by their path or instance id.
"""

from __future__ import annotations

from tandem.store.names import UnknownModelName, parse_model_name
from tandem.store.resolve import DEMO_MODEL_NAME, downloaded_repo_ids


def launchable_by_name(name: str) -> bool:
    """Whether a request naming `name` may launch it: the demo, a catalog id or a repo id."""
    try:
        kind = parse_model_name(name).kind
    except UnknownModelName:
        return False
    return kind in ("demo", "repo")


def servable_model_names() -> list[str]:
    """The launchable models the lists show: the demo, then the repos downloaded here."""
    return [DEMO_MODEL_NAME, *downloaded_repo_ids()]
