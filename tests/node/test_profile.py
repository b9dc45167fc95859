"""A node measures its devices once: the rates are kept in its data directory and read back at
the next start; `--remeasure` measures again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tandem.node.profile as profile
from tandem.node.profile import CACHE_FILE, profile_devices


def test_a_device_is_measured_at_the_first_start_and_read_back_at_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (first,) = profile_devices(tmp_path, ["cpu"])
    assert first.matmul_flops > 0 and first.memory_bandwidth > 0
    kept = json.loads((tmp_path / CACHE_FILE).read_text())
    assert list(kept.values()) == [[first.matmul_flops, first.memory_bandwidth]]

    def no_measuring(device: object) -> tuple[float, float]:
        raise AssertionError("measured again")

    monkeypatch.setattr(profile, "measure_device", no_measuring)
    (again,) = profile_devices(tmp_path, ["cpu"])
    assert (again.matmul_flops, again.memory_bandwidth) == (first.matmul_flops, first.memory_bandwidth)
    with pytest.raises(AssertionError, match="measured again"):
        profile_devices(tmp_path, ["cpu"], remeasure=True)
