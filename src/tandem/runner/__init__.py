"""Runner processes: one per model instance per device, each holding one pipeline stage or its
share of a stage run by a tensor-parallel group.

A runner talks to its node over stdin/stdout (JSON lines, `driver.py`) and to the other
runners of its instance through `torch.distributed` process groups (`wire.py`, `pipeline.py`,
`stage_group.py`). An image model's runners (`spec.task == "image"`) are built by
`images_assemble.py`, pass hidden states around their ring in `images_pipeline.py` and take
requests in `images_driver.py`.
"""
