"""Choosing the device and dtype: CUDA with bfloat16 when present, else CPU with float32."""

from __future__ import annotations

import torch

from tandem.errors import InvalidRequestError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
DEVICE_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("bfloat16", "float16", "float32")}


def resolve_device(name: str | None) -> torch.device:
    """`None`/"auto" picks CUDA if available; otherwise "cpu", "cuda" or "cuda:N"."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidRequestError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in DEVICE_DTYPES:
        raise InvalidRequestError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidRequestError("--device cuda was asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidRequestError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """`None`/"auto" gives bfloat16 on CUDA and float32 on CPU."""
    allowed = DEVICE_DTYPES[device.type]
    if name in (None, "auto"):
        return DTYPES[allowed[0]]
    if name not in allowed:
        raise InvalidRequestError(
            f"dtype {name!r} is not supported on {device.type}; use one of: {', '.join(allowed)}"
        )
    return DTYPES[name]
