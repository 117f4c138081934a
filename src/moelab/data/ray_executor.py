"""`--executor ray`: the same tasks as the local runner, scheduled as Ray tasks.

Each task is a ``@ray.remote(num_cpus=1)`` call of ``execute_task(run_dir, phase, kind, shard)``;
barrier groups are awaited in order, and completion markers make a rerun resume exactly as with
the local executor. Connects to a running cluster when ``RAY_ADDRESS`` is set, otherwise starts a
local Ray with ``workers`` CPUs whose temp files and auth token go under the system temp dir,
never the home directory.
The run directory must be on storage every node can see.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

from moelab.common.deps import require
from moelab.data.pipeline import Pipeline, execute_task
from moelab.data.runner import pending_groups


def _remote_task(run_dir: str, phase: int, kind: str, shard: int | None):
    return execute_task(run_dir, phase, kind, shard)


def _local_auth_token(temp: str) -> None:
    """Give a local Ray its auth token in ``temp``; Ray would otherwise write ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    import secrets

    path = os.path.join(temp, "auth_token")
    with open(path, "w") as fh:
        fh.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = path


def run_ray(pipe: Pipeline, workers: int, log: Callable[[str], None] = print) -> None:
    """Run every pending task of ``pipe`` on Ray."""
    ray = require("ray", "ray")
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if not os.environ.get("RAY_ADDRESS"):
            temp = tempfile.mkdtemp(prefix="moelab-ray-")
            kwargs.update(num_cpus=workers, _temp_dir=temp)
            _local_auth_token(temp)
        ray.init(**kwargs)
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(_remote_task)
        run_dir = str(pipe.run_dir.resolve())
        for group in pending_groups(pipe):
            start = time.time()
            ray.get([task.remote(run_dir, *t) for t in group])
            phase, kind, _ = group[0]
            log(
                f"[data:ray] {pipe.phases[phase].name} {kind}: {len(group)} task(s) "
                f"in {time.time() - start:.1f}s"
            )
    finally:
        if started:
            ray.shutdown()
