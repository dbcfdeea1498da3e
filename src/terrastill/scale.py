"""Scale-out: one place that turns ``--workers N`` / ``--scheduler ADDRESS`` into a Dask client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """A Dask client for an existing scheduler or a local cluster of ``workers`` processes,
    or None (run in-process) when neither is asked for. A local cluster is shut down after."""
    if not scheduler and workers <= 1:
        yield None
        return
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
