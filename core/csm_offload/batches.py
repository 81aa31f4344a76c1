"""What every provider checks before it sends a batch: not empty, within its batch size, and
no text over its limit (a `TooLong`, which the runner answers by splitting the request)."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import TOO_LONG, Rejected, TooLong
from .model import SpeechRequest
from .target import ProviderLimits


def check_batch(
    batch: Sequence[SpeechRequest], limits: ProviderLimits, target: str, who: str
) -> None:
    """Raise the typed error for a batch `limits` refuse; `who` names the host in messages
    ("RunPod targets", "a worker server")."""
    if not batch:
        raise Rejected("an empty batch was submitted", target=target)
    if len(batch) > limits.max_batch:
        raise Rejected(
            f"{len(batch)} requests in one job; {who} take at most {limits.max_batch} (lower "
            "the target's max_batch)",
            target=target,
        )
    for request in batch:
        if len(request.text) > limits.max_text_chars:
            raise TooLong(
                f"{TOO_LONG}: request {request.id} has {len(request.text)} characters; split "
                f"text into chunks of at most {limits.max_text_chars}",
                target=target,
            )
