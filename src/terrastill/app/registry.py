"""The models the server offers: every ``*.pt`` file in its models folder, described by its card."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from terrastill.errors import BadInputError, TerrastillError

log = logging.getLogger(__name__)

CardReader = Callable[[Path], Any]


def jsonable(obj: Any) -> Any:
    """Dataclasses, pydantic models, paths, tuples → plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def _default_reader(path: Path) -> Any:
    from terrastill.models.modelfile import read_card

    return read_card(path)


def describe(path: Path, card: Any) -> dict[str, Any]:
    """The JSON description of one model file that ``GET /api/models`` returns."""
    get = card.get if isinstance(card, dict) else lambda k, d=None: getattr(card, k, d)
    names = list(get("class_names", None) or [])
    colors = list(get("class_colors", None) or [])
    if len(colors) < len(names):
        from terrastill.models.modelfile import default_class_colors

        colors = default_class_colors(names)
    teacher = jsonable(get("teacher", None))
    params = get("params", None)
    return {
        "name": path.stem,
        "file": path.name,
        "title": str(get("name", None) or path.stem),
        "task": str(get("task", None) or "unknown"),
        "role": "student" if teacher else "teacher",
        "classes": [
            {"id": i, "name": str(n), "color": str(colors[i])} for i, n in enumerate(names)
        ],
        "input_spec": jsonable(get("input_spec", None) or {}),
        "metrics": jsonable(get("metrics", None) or {}),
        "params": int(params) if params is not None else None,
        "macs": jsonable(get("macs", None)),
        "depth": jsonable(get("depth", None)),
        "teacher": teacher,
        "size_mb": round(path.stat().st_size / 1e6, 2),
    }


class ModelRegistry:
    """Reads each card once per file version (path, mtime, size)."""

    def __init__(self, models_dir: Path, read_card: CardReader | None = None) -> None:
        self.models_dir = Path(models_dir)
        self._read = read_card or _default_reader
        self._cache: dict[Path, tuple[tuple[float, int], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def list(self) -> list[dict[str, Any]]:
        out = []
        if not self.models_dir.is_dir():
            return out
        for path in sorted(self.models_dir.glob("*.pt")):
            info = self._describe(path)
            if info is not None:
                out.append(info)
        return out

    def _describe(self, path: Path) -> dict[str, Any] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_mtime, st.st_size)
        with self._lock:
            hit = self._cache.get(path)
        if hit and hit[0] == key:
            return hit[1]
        try:
            info = describe(path, self._read(path))
        except (TerrastillError, OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("skipping model %s: %s", path.name, exc)
            return None
        with self._lock:
            self._cache[path] = (key, info)
        return info

    def get(self, name: str) -> dict[str, Any]:
        """The model called ``name`` (a file stem) or a BadInputError listing the known ones."""
        models = self.list()
        for m in models:
            if m["name"] == name:
                return m
        known = ", ".join(m["name"] for m in models) or "none: the models folder is empty"
        raise BadInputError(f"unknown model {name!r}; available: {known}")
