"""Runs queued jobs through ``terrastill.inference.predict.predict``.

Embedded default: a pool of worker threads in the server process. Scale-out: the same threads
hand each predict call to a Dask scheduler (``--scheduler``) and relay its progress (a Dask
``Variable``) and cancellation (a Dask ``Event``); job outputs must then live on a file system the
Dask workers share with the server.

The predict function (and the request class) are injected so the store and runner can be tested
on their own; by default they are imported lazily from ``terrastill.inference.predict``.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rasterio.errors
from shapely.geometry import shape

from terrastill.app.jobs import STAGES, Job, JobStore
from terrastill.app.products import valid_share
from terrastill.app.settings import Settings
from terrastill.atomic import remove_stale_temps
from terrastill.errors import NoImageryError, TerrastillError

log = logging.getLogger(__name__)

PredictFn = Callable[..., Any]
ProgressFn = Callable[[str, float], None]
_PROGRESS_EVERY_S = 0.25


def _default_predict() -> tuple[PredictFn, Callable[..., Any]]:
    from terrastill.inference.predict import PredictRequest, predict

    return predict, PredictRequest


def _relative(paths: Any, root: Path) -> list[str]:
    out = []
    for p in paths or []:
        p = Path(p).resolve()
        out.append(str(p.relative_to(root.resolve())))
    return out


def dask_predict_task(predict_fn: PredictFn, request: Any, job_id: str) -> Any:
    """Runs on a Dask worker: predict, publishing progress and watching for a cancel."""
    from distributed import Event, Variable, get_client

    client = get_client()
    var = Variable(f"terrastill-progress-{job_id}", client=client)
    remote_cancel = Event(f"terrastill-cancel-{job_id}", client=client)
    cancel = threading.Event()
    finished = threading.Event()
    stages: dict[str, float] = {}
    last = [0.0]

    def watch() -> None:
        while not finished.is_set():
            if remote_cancel.wait(timeout=0.5):
                cancel.set()
                return

    def progress(stage: str, fraction: float) -> None:
        stages[stage] = float(fraction)
        now = time.monotonic()
        if now - last[0] >= _PROGRESS_EVERY_S or fraction >= 1.0:
            last[0] = now
            var.set(dict(stages))

    watcher = threading.Thread(target=watch, name=f"cancel-watch-{job_id[:8]}", daemon=True)
    watcher.start()
    try:
        return predict_fn(request, progress=progress, cancel=cancel)
    finally:
        finished.set()
        watcher.join(timeout=2)


class JobRunner:
    """Worker threads taking job ids from a queue; cancellation by a per-job event."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        predict_fn: PredictFn | None = None,
        request_cls: Callable[..., Any] | None = None,
        client: Any = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._predict_fn = predict_fn
        self._request_cls = request_cls
        self._client = client
        self._own_client = False
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        requeued, failed = self.store.recover(self.settings.max_attempts)
        if requeued:
            log.warning("re-queued %d job(s) interrupted by a restart", len(requeued))
        if failed:
            log.warning("failed %d job(s) interrupted too often", len(failed))
        if self.settings.scheduler and self._client is None:
            from distributed import Client

            self._client = Client(self.settings.scheduler, set_as_default=False)
            self._own_client = True
        for job_id in self.store.ids_with_status("queued"):
            self._queue.put(job_id)
        n = self.settings.workers
        for i in range(n):
            t = threading.Thread(target=self._work, name=f"terrastill-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers; jobs still running go back to the queue for the next start."""
        self._stopping.set()
        with self._lock:
            for ev in self._cancel.values():
                ev.set()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=timeout)
        self._threads.clear()
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    @property
    def scheduler(self) -> str:
        if self._client is not None:
            return f"dask ({self._client.scheduler.address})"
        return f"threads ({self.settings.workers})"

    # --- requests -------------------------------------------------------------------------
    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job and remove its files; returns its previous status."""
        previous = self.store.cancel(job_id)
        if previous is None:
            return None
        with self._lock:
            ev = self._cancel.get(job_id)
        if ev is not None:
            ev.set()
        self.remove_files(job_id)
        return previous

    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def remove_files(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # --- the work -------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping.is_set():
                return
            job = self.store.claim(job_id)
            if job is None:  # cancelled while queued, or claimed already
                continue
            cancel = threading.Event()
            with self._lock:
                self._cancel[job_id] = cancel
            try:
                self._run(job, cancel)
            except Exception as exc:  # the store or file system failed: keep the worker alive
                log.error("job %s: runner error", job_id, exc_info=exc)
                self.store.finish(job_id, "failed", error=f"internal error: {exc}")
            finally:
                with self._lock:
                    self._cancel.pop(job_id, None)

    def _build_request(self, job: Job, out_dir: Path) -> Any:
        if self._request_cls is None or self._predict_fn is None:
            fn, cls = _default_predict()
            self._predict_fn = self._predict_fn or fn
            self._request_cls = self._request_cls or cls
        r = job.request
        model = self.settings.models_dir / r["model_file"]
        if not model.is_file():
            raise TerrastillError(f"model file {r['model_file']} is no longer in the models folder")
        return self._request_cls(
            model=model,
            aois=[shape(g) for g in r["aois"]],
            date=_parse_date(r["date"]),
            out_dir=out_dir,
            catalog=self.settings.catalog,
            max_cloud=r.get("max_cloud"),
            tolerance=r.get("tolerance"),
            max_area_km2=self.settings.max_aoi_km2,
            write_truecolor=True,  # the map shows the input beside the prediction
        )

    def _run(self, job: Job, cancel: threading.Event) -> None:
        t0 = time.perf_counter()
        root = self.job_dir(job.id)
        out_dir = root / "out"
        stages = dict.fromkeys(STAGES, 0.0)
        last = [0.0]

        def progress(stage: str, fraction: float) -> None:
            if stage not in stages:
                return
            for s in STAGES[: STAGES.index(stage)]:
                stages[s] = 1.0  # an earlier stage is over once a later one reports
            stages[stage] = min(max(float(fraction), 0.0), 1.0)
            now = time.monotonic()
            if now - last[0] >= _PROGRESS_EVERY_S or fraction >= 1.0:
                last[0] = now
                self.store.set_progress(job.id, dict(stages))

        try:
            if job.attempts > 1:  # a re-run after a restart: start from a clean folder
                shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True, exist_ok=True)
            request = self._build_request(job, out_dir)
            if self._client is not None:
                result = self._run_on_dask(job, request, progress, cancel)
            else:
                assert self._predict_fn is not None
                result = self._predict_fn(request, progress=progress, cancel=cancel)
        except BaseException as exc:
            self._ended_badly(job, cancel, exc)
            return
        if cancel.is_set():
            self._ended_badly(job, cancel, None)
            return
        timings = {k: float(v) for k, v in (getattr(result, "timings", None) or {}).items()}
        timings["total"] = round(time.perf_counter() - t0, 3)
        timings["queued"] = round((job.started or time.time()) - job.created, 3)
        try:
            paths = {
                "classes": _relative(result.classes, root),
                "probabilities": _relative(getattr(result, "probabilities", []), root),
                "truecolor": _relative(getattr(result, "truecolor", []), root),
                "sidecar": _relative([result.sidecar], root)[0] if result.sidecar else None,
            }
        except ValueError as exc:
            self.store.finish(job.id, "failed", error=f"prediction wrote outside its folder: {exc}")
            return
        if not paths["classes"]:
            self.store.finish(job.id, "failed", error="prediction wrote no class raster")
            return
        try:
            paths["valid_share"] = valid_share([root / p for p in paths["classes"]],
                                               job.request["aois"])
        except (OSError, rasterio.errors.RasterioError) as exc:
            log.warning("job %s: valid share not computed (%s)", job.id, exc)
        done = dict.fromkeys(STAGES, 1.0)
        if not self.store.finish(job.id, "done", timings=timings, result=paths, stages=done):
            self.remove_files(job.id)  # cancelled in the last moment

    def _ended_badly(self, job: Job, cancel: threading.Event, exc: BaseException | None) -> None:
        if cancel.is_set():
            if self._stopping.is_set():
                self._release(job)
            else:
                self.remove_files(job.id)  # the store already says cancelled
            return
        if isinstance(exc, TerrastillError):
            message = str(exc)
            if isinstance(exc, NoImageryError):
                message += self._date_hint(job)
        elif isinstance(exc, ImportError):
            message = f"prediction is not available in this installation ({exc})"
        elif isinstance(exc, Exception):
            log.error("job %s failed", job.id, exc_info=exc)
            message = f"internal error: {type(exc).__name__}: {exc}"
        else:  # KeyboardInterrupt, SystemExit
            self._release(job)
            raise exc  # type: ignore[misc]
        remove_stale_temps(self.job_dir(job.id))  # half-written products of the failed run
        self.store.finish(job.id, "failed", error=message)

    def _date_hint(self, job: Job) -> str:
        """'; the catalogue has imagery from A to B' for a local catalogue, else ''."""
        from terrastill.app.coverage import catalog_dates

        locations = [self.settings.catalog] if self.settings.catalog else []
        if not locations:
            try:
                from terrastill.models.modelfile import read_card

                card = read_card(self.settings.models_dir / job.request["model_file"])
                locations = [str(card.input_spec.get("catalog") or "")]
            except (TerrastillError, OSError, KeyError):  # the hint is optional
                return ""
        span = catalog_dates([loc for loc in locations if loc])
        return f"; the catalogue has imagery from {span[0]} to {span[1]}" if span else ""

    def _release(self, job: Job) -> None:
        """A job stopped by a server shutdown goes back to the queue, the attempt not counted."""
        self.store.release(job.id)

    def _run_on_dask(
        self, job: Job, request: Any, progress: ProgressFn, cancel: threading.Event
    ) -> Any:
        from distributed import Event, Variable

        client = self._client
        predict_fn = self._predict_fn
        assert predict_fn is not None
        var = Variable(f"terrastill-progress-{job.id}", client=client)
        remote_cancel = Event(f"terrastill-cancel-{job.id}", client=client)
        remote_cancel.clear()
        var.set({})  # set before the task starts, so reading it never waits
        future = client.submit(
            dask_predict_task,
            predict_fn,
            request,
            job.id,
            key=f"terrastill-predict-{job.id}-{job.attempts}",
            pure=False,
        )
        try:
            while True:
                try:
                    return future.result(timeout=_PROGRESS_EVERY_S)
                except TimeoutError:
                    pass
                if cancel.is_set():
                    remote_cancel.set()
                for stage, fraction in (var.get() or {}).items():
                    progress(stage, fraction)
        finally:
            if not future.done():
                future.cancel()
            try:
                var.delete()
                remote_cancel.clear()
            except Exception as exc:  # best-effort clean-up of scheduler state
                log.debug("dask clean-up for job %s: %s", job.id, exc)


def _parse_date(value: str) -> Any:
    import datetime as dt

    return dt.date.fromisoformat(value)
