"""run_distributed(fn, world_size): spawn gloo processes on a free port (OLMo-core style)."""

from __future__ import annotations

import faulthandler
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    faulthandler.enable()  # a native abort in a worker prints its Python stack
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        # Every rank's collectives must have finished before any rank tears its group down: a
        # gloo worker thread still holding work at teardown aborts the process (SIGABRT,
        # "terminate called without an active exception"), which made EP tests flaky.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Success: leave without interpreter finalization, where gloo threads still holding Python
    # tensors occasionally abort (pytorch/pytorch#179291). Failures above raise as usual.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn, world_size: int = 2, args: tuple = ()) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes; re-raises a worker's failure."""
    mp.spawn(_worker, args=(world_size, _free_port(), fn, args), nprocs=world_size, join=True)
