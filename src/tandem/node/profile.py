"""What this machine has: its devices, with matrix throughput and memory bandwidth measured once.

The measurements take a second or two per device at a node's first start and are cached in the
data directory, keyed by the hardware they describe; free memory is read fresh every time. A
node may offer less memory than it has (`--memory`): its devices' total is capped and free
memory never reads more than the total.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from tandem.cluster.topology import DeviceInfo
from tandem.errors import TandemError

CACHE_FILE = "profile.json"
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def _first_line(paths: tuple[str, ...]) -> str:
    for path in paths:
        try:
            line = Path(path).read_text().strip()
        except OSError:
            continue
        if line:
            return line
    return ""


def host_id() -> str:
    """Which machine this is, the same for every process on it: a digest of the machine id and
    this boot's id (so a cloned disk or a container image booted twice is told apart), else of
    the host name and a network card's address. Nodes that report the same one share the RAM."""
    machine = _first_line(MACHINE_ID_FILES)
    boot = _first_line((BOOT_ID_FILE,))
    if not machine and not boot:
        machine = f"{socket.gethostname()}/{uuid.getnode():012x}"
    return hashlib.sha256(f"tandem-host\0{machine}\0{boot}".encode()).hexdigest()[:16]


def _median_seconds(work: Callable[[], object], synchronize: Callable[[], None], repeats: int) -> float:
    work()  # warm-up: first-call allocations and kernel selection stay out of the timing
    synchronize()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        synchronize()
        samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]


def measure_device(device: torch.device) -> tuple[float, float]:
    """(matmul FLOP/s, copy bandwidth in bytes read + written per second) of one device."""
    if device.type == "cuda":
        size, dtype, copy_bytes = 4096, torch.bfloat16, 512 * 2**20
        synchronize = lambda: torch.cuda.synchronize(device)  # noqa: E731
    else:
        size, dtype, copy_bytes = 512, torch.float32, 64 * 2**20
        synchronize = lambda: None  # noqa: E731
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size**3 / _median_seconds(lambda: torch.mm(a, b), synchronize, repeats=5)
    source = torch.empty(copy_bytes, dtype=torch.uint8, device=device).random_(0, 255)
    target = torch.empty_like(source)
    bandwidth = 2 * copy_bytes / _median_seconds(lambda: target.copy_(source), synchronize, repeats=5)
    return flops, bandwidth


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


class RateCache:
    """Measured rates kept in the data directory, keyed by the hardware they describe: a
    device is measured at a node's first start (or with `--remeasure`), not at every start."""

    def __init__(self, data_dir: Path, remeasure: bool = False) -> None:
        self.path = data_dir / CACHE_FILE
        self.rates = {} if remeasure else _load_cache(self.path)

    def rates_of(self, key: str, measure: Callable[[], tuple[float, float]]) -> tuple[float, float]:
        """(matmul FLOP/s, copy bandwidth) for the device `key` names, measured if not kept yet."""
        if key not in self.rates:
            self.rates[key] = list(measure())
        flops, bandwidth = self.rates[key]
        return flops, bandwidth

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.rates, indent=2))


def _load_cache(path: Path) -> dict[str, list[float]]:
    try:
        data = json.loads(path.read_text())
        return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 2}
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def profile_devices(
    data_dir: Path, allowed: list[str] | None = None, remeasure: bool = False
) -> tuple[DeviceInfo, ...]:
    """This machine's devices (`allowed` torch names such as ["cpu", "cuda:0"]; None for all)."""
    cache = RateCache(data_dir, remeasure)
    found: list[tuple[torch.device, str, int, int]] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            found.append((torch.device("cuda", index), torch.cuda.get_device_name(index), total, free))
    memory = psutil.virtual_memory()
    found.append((torch.device("cpu"), cpu_name(), memory.total, memory.available))
    devices = []
    for device, name, total, free in found:
        torch_name = "cpu" if device.type == "cpu" else f"cuda:{device.index}"
        if allowed is not None and torch_name not in allowed:
            continue
        flops, bandwidth = cache.rates_of(
            f"{torch_name}|{name}|{total}", lambda device=device: measure_device(device)
        )
        devices.append(
            DeviceInfo(
                kind="cpu" if device.type == "cpu" else "cuda",
                index=device.index or 0,
                name=name,
                memory_total=total,
                memory_free=free,
                matmul_flops=flops,
                memory_bandwidth=bandwidth,
            )
        )
    cache.save()
    return tuple(devices)


def limit_memory(devices: tuple[DeviceInfo, ...], limit: int | None) -> tuple[DeviceInfo, ...]:
    """The devices offering at most `limit` bytes each (None: all they have)."""
    if limit is None:
        return devices
    return tuple(
        DeviceInfo(
            **{
                **device.__dict__,
                "memory_total": min(device.memory_total, limit),
                "memory_free": min(device.memory_free, limit),
                "memory_capped": True,
            }
        )
        for device in devices
    )


def refresh_free_memory(devices: tuple[DeviceInfo, ...]) -> tuple[DeviceInfo, ...]:
    """The same devices with free memory read now (measurements unchanged), never more than
    their total (which `limit_memory` may have capped)."""
    refreshed = []
    for device in devices:
        if device.kind == "cuda":
            free, _ = torch.cuda.mem_get_info(device.index)
        else:
            free = psutil.virtual_memory().available
        refreshed.append(DeviceInfo(**{**device.__dict__, "memory_free": min(free, device.memory_total)}))
    return tuple(refreshed)


# --- engines ------------------------------------------------------------------------------------


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def node_engine(asked: str | None) -> str:
    """The engine this node's CPU-side device runs: as asked ("torch", "mlx"), else MLX on an
    Apple-silicon Mac where it is installed (its GPU is reached only through MLX), else torch."""
    from tandem.mlx import mlx_available, require_mlx

    if asked == "mlx":
        require_mlx("--engine mlx")
        return "mlx"
    return "mlx" if asked is None and is_apple_silicon() and mlx_available() else "torch"


def with_engine(
    devices: tuple[DeviceInfo, ...], engine: str, data_dir: Path, remeasure: bool = False
) -> tuple[DeviceInfo, ...]:
    """The devices with MLX's in place of the CPU when `engine` is "mlx": the Metal GPU where MLX
    has one (the CPU shares its unified memory, so it is not offered beside it), else the CPU
    through MLX's CPU backend; its rates measured through MLX at the first start (a second or
    two) and kept with the others. CUDA devices stay on the PyTorch engine. MLX asked for where
    the node offers no CPU (`--devices cuda:0`) is an error: there is nothing for it to run."""
    if engine != "mlx":
        return devices
    if not any(device.kind == "cpu" for device in devices):
        offered = ", ".join(device.torch_device for device in devices) or "none"
        raise TandemError(
            f"--engine mlx runs this node's CPU side (its Metal GPU or CPU) on MLX, but the node "
            f"offers no CPU (devices: {offered}): add cpu to --devices or drop --engine mlx"
        )
    from tandem.mlx.profile import profile_mlx_device

    cache = RateCache(data_dir, remeasure)
    profile = profile_mlx_device(rates_of=cache.rates_of)
    cache.save()
    device = DeviceInfo(
        kind="metal" if profile.backend == "metal" else "cpu",
        index=0,
        name=profile.name,
        memory_total=profile.memory_total,
        memory_free=profile.memory_free,
        matmul_flops=profile.matmul_flops,
        memory_bandwidth=profile.memory_bandwidth,
        power_draw=profile.power_draw,
        engine="mlx",
    )
    return tuple(device if old.kind == "cpu" else old for old in devices)
