"""The job store: one SQLite table (stdlib ``sqlite3``, WAL), safe to share between threads.

A job is a row: its request (JSON), status, per-stage progress, timings, error and result paths
(relative to the job's own folder). Status moves ``queued → running → done | failed`` or to
``cancelled``; the conditional updates here (``... WHERE status = ?``) make a cancel that races a
finishing worker come out one way only.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("fetch imagery", "predict", "write COG")
# Share of the overall 0–100 progress each stage stands for.
STAGE_WEIGHTS = {"fetch imagery": 0.3, "predict": 0.6, "write COG": 0.1}
ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled")
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id        TEXT PRIMARY KEY,
    status    TEXT NOT NULL,
    request   TEXT NOT NULL,
    created   REAL NOT NULL,
    started   REAL,
    finished  REAL,
    stages    TEXT NOT NULL,
    timings   TEXT NOT NULL DEFAULT '{}',
    error     TEXT,
    note      TEXT,
    result    TEXT,
    attempts  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""


def new_job_id() -> str:
    """A fresh job id: 32 lowercase hex digits (a UUID4 without dashes)."""
    return uuid.uuid4().hex


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the exact shape of a job id (nothing else reaches the disk)."""
    return bool(_JOB_ID_RE.fullmatch(value))


def overall_progress(stages: dict[str, float]) -> float:
    """0–100 from the per-stage fractions (0–1)."""
    total = sum(STAGE_WEIGHTS[s] * min(max(stages.get(s, 0.0), 0.0), 1.0) for s in STAGES)
    return round(100.0 * total, 1)


@dataclass
class Job:
    """One row of the store, decoded."""

    id: str
    status: str
    request: dict[str, Any]
    created: float
    started: float | None = None
    finished: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None
    result: dict[str, Any] | None = None
    attempts: int = 0

    @property
    def progress(self) -> float:
        return 100.0 if self.status == "done" else overall_progress(self.stages)

    @property
    def stage(self) -> str | None:
        """The stage now running (the first one not finished) while the job runs."""
        if self.status != "running":
            return None
        for s in STAGES:
            if self.stages.get(s, 0.0) < 1.0:
                return s
        return STAGES[-1]


class JobStore:
    """Jobs in one SQLite file. Every method is atomic and may be called from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _decode(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            status=row["status"],
            request=json.loads(row["request"]),
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            stages=json.loads(row["stages"]),
            timings=json.loads(row["timings"]),
            error=row["error"],
            note=row["note"],
            result=json.loads(row["result"]) if row["result"] else None,
            attempts=row["attempts"],
        )

    # --- reading -------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._decode(row) if row else None

    def list(self, limit: int = 100, offset: int = 0) -> list[Job]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs ORDER BY created DESC, id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [self._decode(r) for r in rows]

    def ids_with_status(self, *statuses: str) -> list[str]:
        """Ids in submission order."""
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE status IN ({marks}) ORDER BY created, id", statuses
            ).fetchall()
        return [r["id"] for r in rows]

    def count_active(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchone()
        return int(row[0])

    # --- writing -------------------------------------------------------------------------
    def create(self, request: dict[str, Any], job_id: str | None = None) -> Job:
        job = Job(
            id=job_id or new_job_id(),
            status="queued",
            request=request,
            created=time.time(),
            stages=dict.fromkeys(STAGES, 0.0),
        )
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, status, request, created, stages) VALUES (?, ?, ?, ?, ?)",
                (job.id, job.status, json.dumps(request), job.created, json.dumps(job.stages)),
            )
        return job

    def claim(self, job_id: str) -> Job | None:
        """queued → running (counting the attempt); None if the job is no longer queued."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'running', started = ?, attempts = attempts + 1, "
                "stages = ? WHERE id = ? AND status = 'queued'",
                (time.time(), json.dumps(dict.fromkeys(STAGES, 0.0)), job_id),
            )
        return self.get(job_id) if cur.rowcount else None

    def set_progress(self, job_id: str, stages: dict[str, float]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET stages = ? WHERE id = ? AND status = 'running'",
                (json.dumps(stages), job_id),
            )

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        timings: dict[str, float] | None = None,
        result: dict[str, Any] | None = None,
        stages: dict[str, float] | None = None,
    ) -> bool:
        """running → ``status``; False if the job was not running (e.g. cancelled meanwhile)."""
        assert status in FINAL
        sets = ["status = ?", "finished = ?", "error = ?"]
        args: list[Any] = [status, time.time(), error]
        if timings is not None:
            sets.append("timings = ?")
            args.append(json.dumps(timings))
        if result is not None:
            sets.append("result = ?")
            args.append(json.dumps(result))
        if stages is not None:
            sets.append("stages = ?")
            args.append(json.dumps(stages))
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND status = 'running'",
                (*args, job_id),
            )
        return bool(cur.rowcount)

    def cancel(self, job_id: str) -> str | None:
        """queued/running → cancelled; returns the status it had (None: no such job)."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] in ACTIVE:
                db.execute(
                    "UPDATE jobs SET status = 'cancelled', finished = ?, "
                    "error = 'cancelled by request' WHERE id = ?",
                    (time.time(), job_id),
                )
            return str(row["status"])

    def release(self, job_id: str) -> bool:
        """running → queued without counting the attempt (the server is shutting down)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', started = NULL, attempts = attempts - 1, "
                "note = 'the server stopped while this job ran; it resumes on the next start' "
                "WHERE id = ? AND status = 'running'",
                (job_id,),
            )
        return bool(cur.rowcount)

    def delete(self, job_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return bool(cur.rowcount)

    def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """After a restart: re-queue jobs left running, or fail those out of attempts.

        Returns (ids re-queued, ids failed). Queued jobs stay queued; the caller enqueues them.
        """
        requeued, failed = [], []
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, attempts FROM jobs WHERE status = 'running' ORDER BY created, id"
            ).fetchall()
            for r in rows:
                if r["attempts"] < max_attempts:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', started = NULL, stages = ?, note = ? "
                        "WHERE id = ?",
                        (
                            json.dumps(dict.fromkeys(STAGES, 0.0)),
                            "the server restarted while this job ran; it was run again",
                            r["id"],
                        ),
                    )
                    requeued.append(r["id"])
                else:
                    db.execute(
                        "UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                        (
                            time.time(),
                            f"interrupted by a server restart {r['attempts']} time(s); "
                            "not retried again — submit it anew",
                            r["id"],
                        ),
                    )
                    failed.append(r["id"])
        return requeued, failed
