"""Runner processes: one per model instance per device, each holding one pipeline stage.

A runner talks to its node over stdin/stdout (JSON lines, `protocol.py`) and to the other
runners of its instance through a `torch.distributed` process group (`wire.py`, `pipeline.py`).
"""
