"""The torch-free vocabulary of models, shared by every layer: a checkpoint's configuration, the
stages it is split into, its sizes as placement counts them, a request's sampling settings, and
the plan of one forward step.

Nothing here imports torch (or the engine): the node, placement, the API and the protocol read
these on machines and in processes that never load a tensor.
"""
