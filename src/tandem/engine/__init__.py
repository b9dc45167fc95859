"""The single-device inference engine.

This package's `__init__` imports nothing heavy: `tandem.model.config` and `tandem.model.stage`
are pure Python so that placement can read model shapes without importing torch.
"""
