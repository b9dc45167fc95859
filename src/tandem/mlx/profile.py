"""What a device that runs the MLX engine has: memory, and copy bandwidth and matrix rate
measured through MLX itself (a copy and a matmul timed with `mx.eval`), plus power where the OS
reports it without root.

On Apple silicon the GPU shares the machine's memory ("unified memory"): its total is the
machine's (`sysctl hw.memsize`), and Metal's recommended working set bounds what one process
should hold. On Linux the same measurements run on MLX's CPU backend, which is how they are
tested here; the macOS-only readings are the small functions marked so below.
"""

from __future__ import annotations

import platform
import plistlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import psutil

METAL_COPY_BYTES = 1 * 2**30
CPU_COPY_BYTES = 64 * 2**20
METAL_MATMUL_SIZE = 4096
CPU_MATMUL_SIZE = 512

RatesOf = Callable[[str, Callable[[], tuple[float, float]]], tuple[float, float]]


@dataclass(frozen=True)
class MLXDeviceProfile:
    """One device as the MLX engine sees it (the fields `cluster.topology.DeviceInfo` carries,
    plus which engine and backend computes there)."""

    engine: str  # "mlx"
    backend: str  # "metal" or "cpu"
    name: str  # "Apple M3 Max", "AMD EPYC (2 cores)"
    memory_total: int  # bytes: unified memory on Apple silicon, RAM elsewhere
    memory_free: int  # bytes available now
    working_set_limit: int | None  # Metal's recommended working set (bytes); None on the CPU
    matmul_flops: float  # measured, in `matmul_dtype`
    matmul_dtype: str
    memory_bandwidth: float  # measured copy, bytes read + written per second
    power_draw: float | None  # watts, where the OS reports it without root; None: not reported


def _median_seconds(work: Callable[[], mx.array], repeats: int) -> float:
    mx.eval(work())  # warm-up: kernels are built and buffers allocated on first use
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        mx.eval(work())
        samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]


def copy_bandwidth(device: mx.DeviceType, size: int | None = None, repeats: int = 5) -> float:
    """Bytes read + written per second by an elementwise copy of `size` bytes on `device`."""
    size = size or (METAL_COPY_BYTES if device == mx.gpu else CPU_COPY_BYTES)
    with mx.stream(device):
        source = mx.random.randint(0, 255, (size,), dtype=mx.uint8)
        mx.eval(source)
        # `source + 0` reads every byte once and writes a new array of the same size
        seconds = _median_seconds(lambda: source + 0, repeats)
    return 2 * size / seconds


def matmul_flops(device: mx.DeviceType, dtype: mx.Dtype, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a square matmul in `dtype` on `device`."""
    size = size or (METAL_MATMUL_SIZE if device == mx.gpu else CPU_MATMUL_SIZE)
    with mx.stream(device):
        a = mx.random.normal((size, size)).astype(dtype)
        b = mx.random.normal((size, size)).astype(dtype)
        mx.eval(a, b)
        seconds = _median_seconds(lambda: a @ b, repeats)
    return 2 * size**3 / seconds


def profile_mlx_device(backend: str | None = None, rates_of: RatesOf | None = None) -> MLXDeviceProfile:
    """Measure the device MLX computes on: Metal where available (or asked), else its CPU.
    `rates_of(key, measure)` may answer the rates from what an earlier start measured (the
    node's cache, keyed by backend, device name and memory); without it they are measured."""
    backend = backend or ("metal" if mx.metal.is_available() else "cpu")
    device = mx.gpu if backend == "metal" else mx.cpu
    dtype, dtype_name = (mx.float16, "float16") if backend == "metal" else (mx.float32, "float32")
    memory = psutil.virtual_memory()
    total = macos_memory_bytes() or memory.total
    info = _metal_info() if backend == "metal" else {}
    name = str(info.get("device_name") or info.get("architecture") or _cpu_name())
    memory_total = int(info.get("memory_size") or total)

    def measure() -> tuple[float, float]:
        return matmul_flops(device, dtype), copy_bandwidth(device)

    key = f"mlx:{backend}|{name}|{memory_total}"
    flops, bandwidth = rates_of(key, measure) if rates_of is not None else measure()
    return MLXDeviceProfile(
        engine="mlx",
        backend=backend,
        name=name,
        memory_total=memory_total,
        memory_free=memory.available,
        working_set_limit=info.get("max_recommended_working_set_size"),
        matmul_flops=flops,
        matmul_dtype=dtype_name,
        memory_bandwidth=bandwidth,
        power_draw=macos_power_watts(),
    )


def _metal_info() -> dict:
    """Metal's description of the GPU (`mx.device_info`; `mx.metal.device_info` before it)."""
    read = getattr(mx, "device_info", None) or mx.metal.device_info
    return dict(read())


def _cpu_name() -> str:
    from tandem.node.profile import cpu_name

    return cpu_name()


# --- macOS only: small, and None elsewhere -------------------------------------------------


def is_macos() -> bool:
    return platform.system() == "Darwin"


def macos_memory_bytes() -> int | None:
    """Physical (unified) memory from `sysctl hw.memsize`; None off macOS or if it fails."""
    if not is_macos():
        return None
    try:
        output = subprocess.run(
            ["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
        return int(output.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def macos_power_watts() -> float | None:
    """The machine's power draw in watts where macOS reports it without root: Apple-silicon
    laptops' battery controller gives the system's input power (`ioreg`, AppleSmartBattery,
    PowerTelemetryData.SystemPowerIn in mW). None elsewhere (desktops, off macOS): not reported.
    (`powermetrics` reads the GPU's own power but needs root.)"""
    if not is_macos():
        return None
    try:
        output = subprocess.run(
            ["ioreg", "-a", "-r", "-c", "AppleSmartBattery"], capture_output=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return power_from_ioreg(output)


def power_from_ioreg(plist_bytes: bytes) -> float | None:
    """Watts from `ioreg -a -r -c AppleSmartBattery` output (a plist array of one entry)."""
    try:
        entries = plistlib.loads(plist_bytes) if plist_bytes.strip() else []
    except (plistlib.InvalidFileException, ValueError):
        return None
    for entry in entries if isinstance(entries, list) else []:
        telemetry = entry.get("PowerTelemetryData") if isinstance(entry, dict) else None
        milliwatts = telemetry.get("SystemPowerIn") if isinstance(telemetry, dict) else None
        if isinstance(milliwatts, int) and milliwatts > 0:
            return milliwatts / 1000.0
    return None
