"""Retries with exponential backoff and jitter for flaky remote calls (STAC APIs, assets).

One policy object (:class:`RetryPolicy`) says how often and how patiently to retry; one function
(:func:`retry_call`) applies it to a callable. The same policy also configures GDAL's own HTTP
retries for asset reads (see :func:`terrastill.io_http.gdal_env`), so a remote catalogue and its
assets are retried with the same limits.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# HTTP statuses worth another try: throttling, gateway trouble, server hiccups, timeouts.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_transient_status(status: int | None) -> bool:
    """Whether an HTTP status code is worth retrying (``None``: no response at all -> yes)."""
    return status is None or status in TRANSIENT_STATUS


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return float(value)
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, value, default)
        return default


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``attempts`` tries in all, delays capped.

    Defaults come from ``TERRASTILL_RETRY_ATTEMPTS`` / ``TERRASTILL_RETRY_BASE_DELAY`` /
    ``TERRASTILL_RETRY_MAX_DELAY`` when set (read when a policy is made), else 5 / 0.2 s / 8 s.

    The delay after failed try ``k`` (0-based) is ``min(max_delay, base_delay * 2**k)`` scaled by
    a random factor in ``[1 - jitter, 1]`` ("equal jitter"), so clients that failed together do
    not retry together. ``seed`` makes the jitter reproducible (tests); ``None`` uses the global
    RNG.
    """

    attempts: int = field(default_factory=lambda: int(_env_float("TERRASTILL_RETRY_ATTEMPTS", 5)))
    base_delay: float = field(
        default_factory=lambda: _env_float("TERRASTILL_RETRY_BASE_DELAY", 0.2)
    )
    max_delay: float = field(default_factory=lambda: _env_float("TERRASTILL_RETRY_MAX_DELAY", 8.0))
    jitter: float = 0.5
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy delays must be >= 0 and jitter within [0, 1]")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (0-based)."""
        d = min(self.max_delay, self.base_delay * (2**attempt))
        r = (rng or random).random()
        return d * (1 - self.jitter + self.jitter * r)

    def total_budget(self) -> float:
        """The longest time all waits together can take (without the calls themselves)."""
        return sum(min(self.max_delay, self.base_delay * 2**k) for k in range(self.attempts - 1))

    @classmethod
    def fast(cls, attempts: int = 4) -> RetryPolicy:
        """A policy with millisecond delays, for tests against local fault injection."""
        return cls(attempts=attempts, base_delay=0.005, max_delay=0.05, jitter=0.5, seed=0)


DEFAULT_POLICY = RetryPolicy()  # as configured at import; prefer ``RetryPolicy()`` at call time
NO_RETRY = RetryPolicy(attempts=1)


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
    retry_after: Callable[[BaseException], float | None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying errors that ``is_transient`` accepts.

    The last error is re-raised unchanged once the attempts are spent; ``what`` names the
    resource (a URL or path) in the log lines. ``retry_after`` may extract a server-requested
    wait (HTTP ``Retry-After``) from an error; it is honoured but capped at ``policy.max_delay``.
    """
    rng = random.Random(policy.seed) if policy.seed is not None else None
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt == policy.attempts - 1:
                raise
            wait = policy.delay(attempt, rng)
            if retry_after is not None:
                asked = retry_after(exc)
                if asked is not None:
                    wait = max(wait, min(float(asked), policy.max_delay))
            log.warning(
                "%s: %s; retry %d/%d in %.2fs",
                what,
                _short(exc),
                attempt + 1,
                policy.attempts - 1,
                wait,
            )
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
