"""Module trees on the meta device, built without running any weight initialization.

Weights always come from a checkpoint (or are drawn by the benchmark), so the initializers that
`nn.Linear` and `nn.Embedding` run in their constructors are wasted; worse, on the meta device
torch routes them through code that imports its compiler stack (about 1.5 s here, more on a busy
machine), which every runner would pay at start-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode


class _SkipInitialization(TorchFunctionMode):
    """`torch.nn.init.*` calls return their tensor untouched; everything else runs as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Modules created inside have meta parameters (no memory) and skip initialization."""
    with torch.device("meta"), _SkipInitialization():
        yield
