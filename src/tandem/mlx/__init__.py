"""The MLX engine: a stage engine (`engine/interface.py`) computed by Apple's MLX, on Metal on
Apple silicon and on MLX's CPU backend elsewhere, beside the PyTorch one.

Only this package imports `mlx`, and only its modules that compute (`engine`, `model`, `cache`,
`weights`, `arrays`, `profile`); `engine/affine.py` reads MLX's quantized checkpoints with torch
and numpy alone, for the PyTorch engine. Outside, only `runner/assemble.py` (an MLX stage of a
runner spec), `node/profile.py` (a node's MLX device) and the MLX benchmark import those
modules, and only when MLX is asked for; this module tells whether it is installed.
"""

from __future__ import annotations

import importlib.util


def mlx_available() -> bool:
    """Whether `mlx` and `mlx-lm` can be imported here (the `mlx` extra is installed)."""
    return all(importlib.util.find_spec(name) is not None for name in ("mlx", "mlx_lm"))


def require_mlx(what: str) -> None:
    """Raise a one-line InvalidRequestError naming `what` needs MLX, where it is not installed."""
    if not mlx_available():
        from tandem.errors import InvalidRequestError

        raise InvalidRequestError(f"{what} needs mlx and mlx-lm: pip install 'tandem-llm[mlx]'")
