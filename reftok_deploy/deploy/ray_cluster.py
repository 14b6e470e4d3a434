"""Joining a Ray cluster, or starting an embedded one, quietly: shared by reftok-tokenize and reftok-serve."""

from __future__ import annotations

import logging

from reftok_deploy.base.errors import ReftokError


def start_ray(address: str | None, num_cpus: int | None) -> None:
    """Join ``address`` (or RAY_ADDRESS), else start an embedded local Ray on this machine's cores."""
    import ray

    if ray.is_initialized():
        return
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ReftokError(f"cannot reach a Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
    else:
        ray.init(address="local", num_cpus=num_cpus, **quiet)
    if not logging.getLogger("reftok_deploy").isEnabledFor(logging.DEBUG):  # quiet unless -v
        # The driver prints the raylet's messages (a worker died, its task is retried) on stdout, where
        # --json's document goes; Ray's own debugger turns them off the same way.
        worker = getattr(getattr(ray, "_private", None), "worker", None)
        if worker is not None and hasattr(worker, "_worker_logs_enabled"):
            worker._worker_logs_enabled = False
