"""Runner processes: one per model instance per device, each holding one pipeline stage or its
share of a stage run by a tensor-parallel group.

A runner talks to its node over stdin/stdout (JSON lines, `driver.py`) and to the other
runners of its instance through `torch.distributed` process groups (`wire.py`, `pipeline.py`,
`stage_group.py`).
"""
