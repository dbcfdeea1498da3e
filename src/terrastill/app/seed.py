"""Finished predictions made outside the service (the demo's) listed as finished jobs."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from terrastill.app.jobs import STAGES, JobStore
from terrastill.app.products import valid_share
from terrastill.app.settings import Settings


def add_finished_job(settings: Settings, request: Mapping[str, Any],
                     products: Mapping[str, Sequence[Path]], key: str) -> str:
    """Copy ``products`` (layer → COGs, one per zone) into a new finished job and return its
    id; a job added before under the same ``key`` is returned instead (idempotent)."""
    store = JobStore(settings.db_path)
    try:
        for job in store.list(limit=500):
            if job.request.get("added_from") == key:
                return job.id
        job = store.create({**request, "added_from": key})
        store.claim(job.id)
        out = settings.jobs_dir / job.id / "out"
        out.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {}
        for layer, paths in products.items():
            result[layer] = []
            for p in paths:
                shutil.copyfile(p, out / Path(p).name)
                result[layer].append(f"out/{Path(p).name}")
        result["valid_share"] = valid_share([out / Path(p).name for p in products["classes"]],
                                            request["aois"])
        store.finish(job.id, "done", result=result, stages=dict.fromkeys(STAGES, 1.0),
                     timings={})
        return job.id
    finally:
        store.close()
