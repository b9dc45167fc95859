"""Crossing between MLX arrays and torch tensors at the stage engine's boundary.

Hidden states and logits leave the MLX engine as torch CPU tensors (the wire between stages is
`torch.distributed`), through numpy. numpy has no bfloat16, so bfloat16 crosses as its bits
(16-bit integers viewed back on the other side): the bytes on the wire are the same either way.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import torch

from tandem.errors import InvalidRequestError

MLX_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
DTYPE_NAMES = {dtype: name for name, dtype in MLX_DTYPES.items()}


def to_mlx(tensor: torch.Tensor) -> mx.array:
    """A copy of a torch tensor (any device) as an MLX array of the same dtype and shape."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype == torch.bfloat16:
        return mx.array(tensor.view(torch.int16).numpy()).view(mx.bfloat16)
    return mx.array(tensor.numpy())


def to_torch(array: mx.array) -> torch.Tensor:
    """A torch CPU tensor holding an (evaluated) MLX array's values, same dtype and shape."""
    if array.dtype == mx.bfloat16:
        bits = np.array(array.view(mx.int16))
        return torch.from_numpy(bits).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))


def mlx_dtype(name: str) -> mx.Dtype:
    """The MLX dtype for a Tandem dtype name, with a one-line error for others."""
    if name not in MLX_DTYPES:
        raise InvalidRequestError(
            f"dtype {name!r} is not supported by the MLX engine; use one of: {', '.join(MLX_DTYPES)}"
        )
    return MLX_DTYPES[name]
