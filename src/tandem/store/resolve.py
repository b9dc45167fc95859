"""Where a model named on the command line or in a request lives on disk."""

from __future__ import annotations

from pathlib import Path

from tandem.errors import TandemError

DEMO_MODEL_NAME = "demo"
DEMO_MODEL_DIR = Path(__file__).parent.parent / "demo_model"


def resolve_model_dir(name: str) -> Path:
    """`demo` is the model shipped with Tandem; anything else is a checkpoint directory."""
    if name == DEMO_MODEL_NAME:
        return DEMO_MODEL_DIR
    try:
        path = Path(name).expanduser()
        exists = path.exists()
    except (RuntimeError, OSError, ValueError):  # ~nobody, a name too long for the file system
        exists = False
    if not exists:
        raise TandemError(f"model {name!r} not found: give a checkpoint directory, or 'demo'")
    if not path.is_dir():
        raise TandemError(f"model {name!r} is a file; give the checkpoint directory that holds it")
    return path
