"""Parallelism applied from outside to a model that knows nothing of it (torch.distributed only)."""
