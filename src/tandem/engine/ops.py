"""Elementwise building blocks with a fast path: fused Triton kernels on CUDA, the reference
PyTorch code elsewhere. Both round where the reference rounds."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def kernels_available() -> bool:
    """Triton kernels run on CUDA when Triton imports, unless the engine options say eager."""
    from tandem import settings

    return not settings.engine_options().eager and _triton_on_cuda()


@functools.cache
def _triton_on_cuda() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_kernels(x: torch.Tensor) -> bool:
    return x.is_cuda and kernels_available()


def kernel_head_dim(head_dim: int) -> bool:
    """The attention kernels tile a head with matrix instructions: a power of two, at least 16."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


# Decode products with a few rows go through the Triton matrix-vector kernel (unless the engine
# options say cuBLAS); larger products, and float32 (which Triton would round to tf32), F.linear.
GEMV_DTYPES = (torch.bfloat16, torch.float16)
# A CPU product of 16-bit weights with at least this many rows runs in fp32 (see quant/cpu.py).
CPU_UPCAST_ROWS = 16


def linear(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x), by the kernel that streams the weight fastest for this shape. A layer that is
    not a plain Linear (a tensor-parallel one, which communicates) runs its own forward."""
    if type(layer) is not torch.nn.Linear:
        return layer(x)
    return matmul(x, layer.weight, layer.bias)


def _by_gemv(x: torch.Tensor) -> bool:
    """Whether a product of x goes through the Triton matrix-vector kernel."""
    from tandem import settings

    if not (x.dtype in GEMV_DTYPES and use_kernels(x) and settings.engine_options().triton_gemv):
        return False
    from tandem.engine.cuda.gemv import MAX_ROWS

    return x.numel() // x.shape[-1] <= MAX_ROWS


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), by the kernel that streams the weight fastest for this shape."""
    if _by_gemv(x):
        from tandem.engine.cuda.gemv import gemv

        return gemv(x, weight, bias)
    if x.device.type == "cpu" and x.dtype in GEMV_DTYPES and x.numel() // x.shape[-1] >= CPU_UPCAST_ROWS:
        from tandem.engine.quant.cpu import upcast_product

        # CPUs without 16-bit matrix units multiply many rows far faster in fp32 (quant/cpu.py).
        return upcast_product(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def gated_linear(gate_up: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of x through a fused gate_up projection (gate features, then up): one
    kernel where the matrix-vector kernel runs, else the product then `silu_mul`."""
    from tandem.engine.quant.linear import QuantizedLinear

    if isinstance(gate_up, QuantizedLinear):
        return gate_up.gated(x)
    if _by_gemv(x):
        from tandem.engine.cuda.gemv import gemv

        return gemv(x, gate_up.weight, gate_up.bias, gated=True)  # type: ignore[arg-type]
    return silu_mul(linear(gate_up, x))


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalize in float32, scale in the activation dtype (as the reference implementation does).
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual), x + residual); without a residual, x itself is the new residual."""
    if use_kernels(x):
        from tandem.engine.cuda.kernels import rms_norm

        normalized, summed = rms_norm(x, weight, eps, residual)
        return normalized, (summed if summed is not None else x)
    summed = x if residual is None else x + residual
    return rms_norm_reference(summed, weight, eps), summed


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, for the fused gate_up projection's output [..., 2 * inner]."""
    if use_kernels(gate_up):
        from tandem.engine.cuda.kernels import silu_mul as fused

        return fused(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
