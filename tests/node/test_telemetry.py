"""Live device readings: CPU load from the OS everywhere; GPU load and power from NVML where an
NVIDIA driver is present (run on the lent GPU machine; skipped elsewhere)."""

from __future__ import annotations

import time

import psutil
import pytest
import torch

from tandem.cluster.topology import DeviceInfo
from tandem.node.profile import limit_memory
from tandem.node.telemetry import Telemetry


def test_the_cpu_reports_its_load_and_free_memory():
    cpu = DeviceInfo("cpu", 0, "cpu", psutil.virtual_memory().total, 0, 1.0, 1.0)
    telemetry = Telemetry()
    time.sleep(0.2)
    (read,) = telemetry.refresh((cpu,))
    telemetry.close()
    assert 0 <= read.utilization <= 1
    assert 0 < read.memory_free <= read.memory_total
    assert read.power_draw is None and read.power_limit is None  # the OS does not say


def test_gpus_report_load_and_power_through_nvml():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    telemetry = Telemetry()
    if telemetry._nvml is None:
        pytest.skip("nvidia-ml-py or the NVIDIA driver is missing")
    gpus = tuple(
        DeviceInfo("cuda", index, torch.cuda.get_device_name(index), 1, 0, 1.0, 1.0)
        for index in range(torch.cuda.device_count())
    )
    idle = telemetry.refresh(gpus)
    # Keep GPU 0 busy for a second: NVML's load is the busy fraction of its last sample period.
    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize(0)
    busy = telemetry.refresh(gpus)
    telemetry.close()
    for device in idle + busy:
        assert 0 <= device.utilization <= 1
        assert device.power_limit > 0 and 0 < device.power_draw < 2 * device.power_limit
        assert device.memory_free > 0
    assert busy[0].utilization > 0.5, busy[0]


def test_a_node_offers_at_most_its_memory_limit_however_much_is_free():
    cpu = DeviceInfo(
        "cpu", 0, "cpu", psutil.virtual_memory().total, psutil.virtual_memory().available, 1.0, 1.0
    )
    (limited,) = limit_memory((cpu,), 10**9)
    assert limited.memory_total == 10**9 and limited.memory_free <= 10**9
    telemetry = Telemetry()
    (read,) = telemetry.refresh((limited,))
    telemetry.close()
    assert read.memory_free <= 10**9
    assert limit_memory((cpu,), None) == (cpu,)
