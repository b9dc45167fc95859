"""Choosing the device and dtype: CUDA with bfloat16 when present, else CPU in the checkpoint's
own 16-bit dtype (so a 16-bit checkpoint never takes twice its size as an fp32 copy)."""

from __future__ import annotations

import torch

from tandem.errors import InvalidRequestError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
DEVICE_DTYPES = {"cpu": ("float32", "bfloat16", "float16"), "cuda": ("bfloat16", "float16", "float32")}


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


def resolve_dtype(
    name: str | None, device: torch.device, checkpoint_dtype: str | None = None, quantized: bool = False
) -> torch.dtype:
    """`None`/"auto" gives bfloat16 on CUDA. On CPU it gives the checkpoint's 16-bit dtype
    (bfloat16 or float16), float32 for a 32-bit checkpoint, and bfloat16 for quantized weights
    stored beside 32-bit scales (the CPU's packed int4/int8 kernels are fast in 16 bits only)."""
    allowed = DEVICE_DTYPES[device.type]
    if name in (None, "auto"):
        if device.type == "cpu":
            if checkpoint_dtype in ("bfloat16", "float16"):
                return DTYPES[checkpoint_dtype]
            return torch.bfloat16 if quantized else torch.float32
        return DTYPES[allowed[0]]
    if name not in allowed:
        raise InvalidRequestError(
            f"dtype {name!r} is not supported on {device.type}; use one of: {', '.join(allowed)}"
        )
    return DTYPES[name]
