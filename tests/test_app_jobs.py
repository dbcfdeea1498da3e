"""The job store and runner: restarts lose no job, cancels race cleanly, Dask runs the same jobs."""

from __future__ import annotations

import threading
import time

import pytest

from app_support import (
    AOI_DEFAULT,
    PredictRequest,
    fake_card,
    fake_predict,
    local_client,
    make_models,
)
from terrastill.app.jobs import JobStore, is_job_id, overall_progress
from terrastill.app.main import create_app
from terrastill.app.runner import JobRunner
from terrastill.app.settings import Settings
from terrastill.errors import BadInputError

BODY = {"aois": [AOI_DEFAULT], "date": "2024-06-01", "model": "student"}


def _request(model_file: str = "student.pt") -> dict:
    return {
        "aois": [
            {
                "type": "Polygon",
                "coordinates": [[[10, 45], [10.05, 45], [10.05, 45.04], [10, 45.04], [10, 45]]],
            }
        ],
        "bounds": [10, 45, 10.05, 45.04],
        "date": "2024-06-01",
        "model": model_file[:-3],
        "model_file": model_file,
        "max_cloud": None,
        "tolerance": None,
        "classes": [],
    }


def _settings(tmp_path, **kw) -> Settings:
    return Settings(models_dir=make_models(tmp_path / "models"), data_dir=tmp_path / "data", **kw)


def _wait(store: JobStore, job_id: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while (status := store.get(job_id).status) in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
    return status


def test_ids_and_progress():
    assert is_job_id("0123456789abcdef0123456789abcdef")
    for bad in ("../etc/passwd", "0123456789ABCDEF0123456789ABCDEF", "abc", "0" * 33, ""):
        assert not is_job_id(bad)
    assert overall_progress({"fetch imagery": 1.0, "predict": 0.5}) == 60.0
    assert overall_progress({}) == 0.0


def test_store_conditional_updates(tmp_path):
    store = JobStore(tmp_path / "j.sqlite")
    job = store.create(_request())
    assert store.claim(job.id).status == "running"
    assert store.claim(job.id) is None  # claimed once only
    assert store.cancel(job.id) == "running"
    # a worker finishing after the cancel does not overwrite it
    assert not store.finish(job.id, "done", result={"classes": ["x.tif"]})
    assert store.get(job.id).status == "cancelled"
    assert store.cancel("f" * 32) is None


def test_restart_resumes_queued_and_requeues_running(tmp_path):
    """A server killed mid-job: queued jobs run on the next start, the running one runs again,
    one interrupted too often fails with a clear message — none is lost."""
    settings = _settings(tmp_path, max_attempts=2)
    store = JobStore(settings.db_path)
    queued = store.create(_request())
    interrupted = store.create(_request())
    store.claim(interrupted.id)  # was running when the server died (attempt 1)
    exhausted = store.create(_request())
    store.claim(exhausted.id)
    with store._tx() as db:  # it had already been resumed once before
        db.execute("UPDATE jobs SET attempts = 2 WHERE id = ?", (exhausted.id,))
    store.close()

    app = create_app(
        settings, predict_fn=fake_predict, request_cls=PredictRequest, read_card=fake_card
    )
    with local_client(app) as c:
        for job_id in (queued.id, interrupted.id):
            deadline = time.monotonic() + 20
            while (st := c.get(f"/api/jobs/{job_id}").json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert st["status"] == "done", st
        st = c.get(f"/api/jobs/{interrupted.id}").json()
        assert "restarted" in st["note"]
        st = c.get(f"/api/jobs/{exhausted.id}").json()
        assert st["status"] == "failed" and "server restart 2 time(s)" in st["error"]


def test_graceful_stop_puts_running_job_back(tmp_path):
    settings = _settings(tmp_path)
    store = JobStore(settings.db_path)
    started = threading.Event()

    def slow(request, progress=None, cancel=None):
        started.set()
        return fake_predict(request, progress, cancel, delay=0.2)

    runner = JobRunner(settings, store, slow, PredictRequest)
    runner.start()
    job = store.create(_request())
    runner.submit(job.id)
    assert started.wait(10)
    runner.stop()
    after = store.get(job.id)
    assert after.status == "queued" and after.attempts == 0 and "resumes" in after.note
    runner = JobRunner(settings, store, fake_predict, PredictRequest)
    runner.start()
    try:
        assert _wait(store, job.id) == "done"
    finally:
        runner.stop()
        store.close()


def test_model_file_gone_fails_clearly(tmp_path):
    settings = _settings(tmp_path)
    store = JobStore(settings.db_path)
    runner = JobRunner(settings, store, fake_predict, PredictRequest)
    runner.start()
    try:
        job = store.create(_request("vanished.pt"))
        runner.submit(job.id)
        assert _wait(store, job.id) == "failed"
        assert "no longer in the models folder" in store.get(job.id).error
    finally:
        runner.stop()
        store.close()


def test_one_server_per_data_dir(tmp_path):
    settings = _settings(tmp_path)
    kw = dict(predict_fn=fake_predict, request_cls=PredictRequest, read_card=fake_card)
    second = local_client(create_app(settings, **kw))
    with local_client(create_app(settings, **kw)), pytest.raises(BadInputError, match="another"):
        second.__enter__()
    with local_client(create_app(settings, **kw)) as c:  # free again after shutdown
        assert c.get("/api/health").status_code == 200


# --- Dask ----------------------------------------------------------------------------------
def _dask_slow(request, progress=None, cancel=None):
    return fake_predict(request, progress, cancel, delay=0.1)


@pytest.fixture()
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    )
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


def test_jobs_run_on_a_dask_scheduler(tmp_path, dask_client):
    settings = _settings(tmp_path, scheduler=dask_client.scheduler.address)
    app = create_app(
        settings,
        predict_fn=_dask_slow,
        request_cls=PredictRequest,
        read_card=fake_card,
        dask_client=dask_client,
    )
    with local_client(app) as c:
        assert c.get("/api/health").json()["runner"].startswith("dask (")
        job_id = c.post("/api/jobs", json=BODY).json()["id"]
        progress_seen = set()
        deadline = time.monotonic() + 60
        while (st := c.get(f"/api/jobs/{job_id}").json())["status"] in ("queued", "running"):
            progress_seen.add(st["progress"])
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert st["status"] == "done", st
        assert any(0 < p < 100 for p in progress_seen), progress_seen  # relayed from the worker
        assert c.get(f"/api/jobs/{job_id}/tiles/14/8648/5892.png").status_code == 200

        # cancel through the Dask event
        job_id = c.post("/api/jobs", json=BODY).json()["id"]
        while c.get(f"/api/jobs/{job_id}").json()["progress"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.delete(f"/api/jobs/{job_id}").json()["status"] == "cancelled"
        # the worker stops well before the ~1.2 s the whole job takes
        time.sleep(1.0)
        assert not (tmp_path / "data" / "jobs" / job_id).exists()
        assert c.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"
