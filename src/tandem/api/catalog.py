"""The models this cluster can serve by name: what the model lists show beside running instances,
and what a request may name to have an instance launched for it.

This is the seam where the model catalog plugs in: today it knows the bundled demo model; the
store's catalog replaces `servable_model_names` with the models it can fetch or has on disk.
Checkpoint directories are not listed (and not launched by a request that names them): launch
them explicitly with `POST /v1/instances`, then name them by their path or instance id.
"""

from __future__ import annotations

from tandem.store.resolve import DEMO_MODEL_NAME


def servable_model_names() -> list[str]:
    """Names a request may use to start a model that is not running yet."""
    return [DEMO_MODEL_NAME]
