"""Tandem: one AI cluster from the machines you already have."""

__version__ = "0.1.0"
