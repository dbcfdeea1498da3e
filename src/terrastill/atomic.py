"""Crash-safe file writing: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from terrastill.errors import OutputError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    The temporary name starts with ``.tmp-`` so an interrupted run leaves nothing that looks like
    a finished file, and a re-run can clean such leftovers.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".tmp-{target.name}.", suffix=suffix or target.suffix, dir=target.parent
        )
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{target.parent}: cannot write here ({exc.strerror})") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise OutputError(f"{target}: cannot write ({exc.strerror})") from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete ``.tmp-*`` leftovers of an interrupted run below ``folder``; return how many."""
    n = 0
    root = Path(folder)
    if not root.exists():
        return 0
    for p in root.rglob(".tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
