"""Byte counts as people read them (decimal units: 1 GB = 10^9 bytes). Pure Python, no imports."""

from __future__ import annotations


def format_bytes(count: float) -> str:
    """`format_bytes(25.8e6)` is "25.8 MB"; whole bytes below 1 kB, TB the largest unit."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")
