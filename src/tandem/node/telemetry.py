"""Live device readings for the dashboard: free memory, utilization and power draw, read once per
heartbeat. GPUs are read through NVML (`nvidia-ml-py`) where the driver offers it; the CPU's
utilization comes from the OS. A reading the hardware does not offer stays None.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Any

import psutil

from tandem.cluster.topology import DeviceInfo
from tandem.node.profile import refresh_free_memory

log = logging.getLogger("tandem.telemetry")


def _open_nvml() -> Any | None:
    """The initialized `pynvml` module, or None where it or the NVIDIA driver is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as error:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        log.debug("NVML unavailable: %s", error)
        return None
    return pynvml


def _cuda_uuid(index: int) -> str | None:
    """The GPU's UUID as NVML spells it ("GPU-…"), so CUDA_VISIBLE_DEVICES reordering cannot mix
    up which card's readings belong to which CUDA ordinal."""
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except Exception:
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


class Telemetry:
    """Reads the live fields of this node's devices; open it once, call `refresh` per heartbeat."""

    def __init__(self) -> None:
        self._nvml = _open_nvml()
        self._handles: dict[int, Any] = {}
        psutil.cpu_percent(interval=None)  # the first reading covers no interval: start one now

    def refresh(self, devices: tuple[DeviceInfo, ...]) -> tuple[DeviceInfo, ...]:
        """The same devices with free memory, utilization and power read now."""
        return tuple(self._read(device) for device in refresh_free_memory(devices))

    def _read(self, device: DeviceInfo) -> DeviceInfo:
        if device.kind == "cpu":
            return replace(device, utilization=psutil.cpu_percent(interval=None) / 100)
        handle = self._handle(device.index)
        if handle is None:
            return device
        nvml = self._nvml
        assert nvml is not None
        utilization = power = limit = None
        with contextlib.suppress(nvml.NVMLError):
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
        with contextlib.suppress(nvml.NVMLError):
            power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000  # milliwatts
        with contextlib.suppress(nvml.NVMLError):
            limit = nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
        return replace(device, utilization=utilization, power_draw=power, power_limit=limit)

    def _handle(self, index: int) -> Any | None:
        if self._nvml is None:
            return None
        if index not in self._handles:
            nvml, uuid = self._nvml, _cuda_uuid(index)
            try:
                handle = (
                    nvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else nvml.nvmlDeviceGetHandleByIndex(index)
                )
            except nvml.NVMLError as error:
                log.debug("no NVML handle for cuda:%d: %s", index, error)
                handle = None
            self._handles[index] = handle
        return self._handles[index]

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None
