"""`batches.check_batch`: the checks every provider makes before sending a batch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csm_offload import Rejected, SpeechRequest
from csm_offload.batches import check_batch
from csm_offload.errors import TOO_LONG, TooLong
from csm_offload.target import ProviderLimits

LIMITS = ProviderLimits(max_batch=3, max_text_chars=20)


@given(st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=30), max_size=5))
def test_a_batch_passes_exactly_when_it_fits(texts: list[str]) -> None:
    batch = [SpeechRequest(t) for t in texts]
    fits = 0 < len(batch) <= 3 and all(len(t) <= 20 for t in texts)
    if fits:
        check_batch(batch, LIMITS, "t", "test targets")
        return
    with pytest.raises(Rejected) as caught:
        check_batch(batch, LIMITS, "t", "test targets")
    assert caught.value.target == "t"
    if isinstance(caught.value, TooLong):
        assert TOO_LONG in str(caught.value)  # the runner splits such a request
    elif batch:
        assert "test targets take at most 3" in str(caught.value)
