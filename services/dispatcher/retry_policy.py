"""When to try a failed delivery again: exponential backoff with full jitter, or the
provider's ``Retry-After`` when it says more. Pure: no I/O, randomness injected."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from shared.settings import Settings


@dataclass(frozen=True)
class RetryPolicy:
    last_attempt: int  # attempts per delivery before it goes to dead letters
    base: timedelta  # the backoff ceiling after the first failure
    cap: timedelta  # the largest backoff
    retry_after_cap: timedelta  # the longest Retry-After honoured

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(
            last_attempt=settings.delivery_max_attempts,
            base=settings.retry_base,
            cap=settings.retry_max,
            retry_after_cap=settings.retry_after_max,
        )

    def delay(
        self,
        failed_attempt: int,
        retry_after: timedelta | None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> timedelta:
        """How long to wait after attempt number ``failed_attempt`` failed.

        Backoff doubles per attempt up to ``cap``, and the wait is drawn uniformly
        from its upper half (jitter that still backs off). A ``Retry-After`` is a
        floor: never retry sooner than the provider asked, up to ``retry_after_cap``.
        """
        doublings = min(max(0, failed_attempt - 1), 32)  # past 2**32 the cap rules anyway
        ceiling = min(self.cap, self.base * (2**doublings))
        seconds = ceiling.total_seconds()
        backoff = timedelta(seconds=uniform(seconds / 2, seconds))
        if retry_after is not None:
            return max(backoff, min(retry_after, self.retry_after_cap))
        return backoff
