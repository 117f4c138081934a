"""FSDP2 (``fully_shard``) per transformer block, then the root; optional mixed precision.

With expert parallelism the sliced expert weights are passed as ``ignored_params``: FSDP neither
shards nor reduces them (they already differ per EP rank); ``parallel.grads`` reduces them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def apply_fsdp(
    model: nn.Module,
    mesh,
    *,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    ignored_params: set[nn.Parameter] | None = None,
) -> nn.Module:
    """Shard each block's parameters over ``mesh`` (1-D, or 2-D for HSDP); the root takes the rest.

    ``param_dtype=torch.bfloat16`` gathers and computes in bf16 with fp32 sharded master
    weights and fp32 gradient reduction.
    """
    kw = {
        "mesh": mesh,
        "mp_policy": mp_policy(param_dtype),
        "reshard_after_forward": reshard_after_forward,
    }
    if ignored_params:
        kw["ignored_params"] = set(ignored_params)
    for block in model.layers.values():
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def mp_policy(param_dtype: torch.dtype | None) -> MixedPrecisionPolicy:
    if param_dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
