"""Retry timing: exponential backoff with full jitter, and `Retry-After` in both its forms.

Full jitter (a uniform draw between 0 and the exponential cap) spreads the retries of many
concurrent jobs so that a burst of failures does not come back as a burst of retries.
"""

from __future__ import annotations

import email.utils
import math
import random
import time

import attrs

#: A Retry-After further away than this is treated as this (a misconfigured proxy should not
#: park a run for a day); the runner's deadlines still apply.
MAX_RETRY_AFTER_S = 3600.0


@attrs.frozen
class RetryPolicy:
    """How often and how patiently one operation is retried."""

    #: Failures of one batch on one target before the runner moves to the next candidate.
    max_retries: int = 3
    base_s: float = 0.25
    cap_s: float = 30.0


def full_jitter(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """A delay drawn uniformly from [0, min(cap, base * 2**attempt)]."""
    ceiling = min(policy.cap_s, policy.base_s * (2 ** min(attempt, 30)))
    return rng.uniform(0.0, ceiling)


def retry_delay(
    attempt: int, retry_after: float | None, policy: RetryPolicy, rng: random.Random
) -> float:
    """The wait before retry number `attempt` (0-based). A provider's `Retry-After` is a floor:
    we never come back earlier than asked, plus a little jitter so callers do not align."""
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, policy.cap_s * 10) + rng.uniform(0.0, policy.base_s)
    return full_jitter(attempt, policy, rng)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date.

    Unparseable values give None (the caller then uses its own backoff), never an error; the
    result is never negative and never above `MAX_RETRY_AFTER_S`."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float | None
    if text.isascii() and text.isdigit():
        seconds = float(int(text)) if len(text) < 20 else MAX_RETRY_AFTER_S
    else:
        try:
            seconds = float(text)
        except ValueError:
            seconds = _http_date_delay(text, time.time() if now is None else now)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def _http_date_delay(text: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        # RFC 9110 dates are always GMT; a date without a zone is not one of them.
        return None
    try:
        return max(0.0, when.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None
