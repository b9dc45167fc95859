"""Tensor parallelism: a model's layers split over the ranks of a group (see docs/tensor-parallel.md).

`sharding` is the arithmetic of who holds what, `group` the collectives, `layers` the modules
that communicate, and `apply` rewrites a model with its family's plan and loads a rank's shard.
"""
