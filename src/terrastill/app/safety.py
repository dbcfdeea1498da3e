"""What the service sends back: JSON-safe values and no server file system paths."""

from __future__ import annotations

import math
import re
from typing import Any

# an absolute POSIX path of two or more parts (not part of a URL): /srv/data/jobs/x.tif
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"(),;]+/)+([^\s/'\"(),;]+)")


def scrub_paths(text: str) -> str:
    """``text`` with absolute file system paths cut to their last part (the file name), so
    errors name the file without telling clients where the server keeps it."""
    return _ABS_PATH.sub(r"\1", text)


def clean(value: Any) -> Any:
    """``value`` as strict JSON: non-finite floats as strings, lone surrogates escaped."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    return value


def scrub_value(value: Any) -> Any:
    """:func:`scrub_paths` on every string inside a JSON-like value."""
    if isinstance(value, str):
        return scrub_paths(value)
    if isinstance(value, list):
        return [scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    return value
