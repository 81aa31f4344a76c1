"""The typed errors of csm-offload.

Two families, because the command line treats them differently: a `UserError` is something the
user can fix (bad config, bad input, nothing usable) and exits 2 with one sentence; a
`ProviderError` is a provider failing and is the runner's to retry, fail over or report (exit 1).
Plugins raise the provider errors and never retry themselves.
"""

from __future__ import annotations


class CsmOffloadError(Exception):
    """Base class of every error csm-offload raises on purpose."""

    exit_code = 1


class UserError(CsmOffloadError):
    """Bad input or configuration: the message names the fix."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration file is wrong; the message names the file, the line and the key."""


class WireError(UserError, ValueError):
    """A wire-format document is malformed; `field` is the JSON path of the first bad field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class AudioError(UserError, ValueError):
    """Audio bytes cannot be decoded, or are over a size bound."""


class PluginError(CsmOffloadError):
    """A plugin could not be loaded or validated."""


class NoUsableTarget(UserError):
    """No configured target can take the work; the message says why for each."""


class BudgetExceeded(UserError):
    """Submitting more work would spend more than the configured `max_usd`."""


class ProviderError(CsmOffloadError):
    """A provider failed. `target` names the configured target when known."""

    def __init__(self, message: str, *, target: str | None = None) -> None:
        super().__init__(message)
        self.target = target


class TransientError(ProviderError):
    """Worth retrying on the same target, after `retry_after` seconds when the provider said so."""

    def __init__(
        self, message: str, *, target: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, target=target)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """Back-pressure (HTTP 429): the target is fine but wants fewer requests. It never counts
    as a failure of the target or the batch; the runner slows down and waits `retry_after`."""


class ResultUnusable(ProviderError):
    """The job is over and its output cannot be used (completed without output, audio that
    does not decode, results for other requests): polling again cannot help, so the runner
    resubmits at once, keeping every good result the job did deliver."""


class Unavailable(ProviderError):
    """The target cannot take work now (down, no workers, bad credentials): fail over."""


class Rejected(ProviderError):
    """The target refused this request for good (too large, invalid): do not send it again."""


#: The words a worker puts in a result's error that no retry can fix (the request itself is
#: invalid): the runner fails that request at once instead of paying to hear it again.
PERMANENT = "cannot succeed on a retry"

#: The words a provider or worker puts in the error of a request whose text is too long for one
#: request: the runner then splits the text at its best breaks and generates the parts instead.
TOO_LONG = "too long for one request"


class TooLong(Rejected):
    """This request's text is too long for one request on this target (its message should
    contain `TOO_LONG`): the runner splits it into shorter parts instead of failing it."""


class JobLost(ProviderError):
    """The provider no longer knows the job (expired or dropped): resubmit it."""
