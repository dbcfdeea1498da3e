"""Retries with exponential backoff and jitter for flaky remote calls (STAC APIs, assets)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``attempts`` tries in all, delays capped."""

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 8.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (0-based)."""
        d = min(self.max_delay, self.base_delay * (2**attempt))
        r = (rng or random).random()
        return d * (1 - self.jitter + self.jitter * r)


DEFAULT_POLICY = RetryPolicy()


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds, retrying errors that ``is_transient`` accepts.

    The last error is re-raised unchanged once the attempts are spent; ``what`` names the
    resource (a URL or path) in the log lines.
    """
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt == policy.attempts - 1:
                raise
            wait = policy.delay(attempt)
            log.warning("%s: %s; retry %d/%d in %.2fs", what, exc, attempt + 1,
                        policy.attempts - 1, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
