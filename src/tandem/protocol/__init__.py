"""Typed messages at every process boundary, and their one codec (`codec.py`).

- `runner.py`: what a node tells its runner processes (the spec they start from, commands on
  stdin) and what they tell it (events on stdout).
- `stages.py`: the headers that travel between the runners of an instance with each step.
- `images.py`: an image request's fields and events, and what an image model's stages pass.
- `control.py`: the signed requests and replies between nodes.

Every message is a frozen dataclass; a received one is decoded by `codec.decode`, which checks
each field, so a malformed or unknown message is refused with a `ProtocolError` naming the field,
never half-used. Standard library and `tandem.model` only: no torch, no pydantic.
"""
