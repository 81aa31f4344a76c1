"""Hypothesis strategies for every wire type (NaN and infinity excluded: JSON has neither)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from csm_offload import (
    Audio,
    AudioData,
    AudioUrl,
    BatchRequest,
    BatchResponse,
    CostEstimate,
    Health,
    JobHandle,
    JobState,
    JobStatus,
    Result,
    Segment,
    SpeechRequest,
    WorkerInfo,
)
from csm_offload.wire import WireLimits

RATES = (8_000, 16_000, 22_050, 24_000, 44_100, 48_000)
finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=40)
ints = st.integers(min_value=-(2**53), max_value=2**53)


@st.composite
def audios(draw: st.DrawFn, max_frames: int = 400) -> Audio:
    """Audio already on the 16-bit grid, so a WAV/FLAC round trip returns it exactly."""
    rate = draw(st.sampled_from(RATES))
    frames = draw(st.integers(min_value=0, max_value=max_frames))
    pcm = draw(
        st.lists(st.integers(-32768, 32767), min_size=frames, max_size=frames).map(
            lambda xs: np.array(xs, dtype=np.int16)
        )
    )
    return Audio(pcm.astype(np.float32) / 32768.0, rate)


def segments(max_text: int = 40) -> st.SearchStrategy[Segment]:
    return st.builds(
        Segment,
        speaker=st.integers(0, 9),
        text=st.text(max_size=max_text),
        audio=st.none() | audios(),
    )


def speech_requests(max_text: int = 40, max_context: int = 3) -> st.SearchStrategy[SpeechRequest]:
    return st.builds(
        SpeechRequest,
        text=st.text(max_size=max_text),
        speaker=st.integers(0, 9),
        context=st.lists(segments(max_text), max_size=max_context).map(tuple),
        max_audio_length_ms=st.integers(1, 600_000),
        temperature=st.floats(0, 5, allow_nan=False),
        topk=st.integers(1, 2048),
        seed=ints,
    )


audio_data = st.builds(
    AudioData,
    format=st.sampled_from(["wav", "flac"]),
    sample_rate=st.sampled_from(RATES),
    data=st.binary(max_size=64),
)
audio_urls = st.builds(
    AudioUrl,
    url=st.text(max_size=30).map(lambda path: "https://bucket.example/" + path),
    format=st.none() | st.sampled_from(["wav", "flac"]),
    sample_rate=st.none() | st.sampled_from(RATES),
)
results = st.builds(
    Result,
    id=text,
    audio=st.none() | audio_data | audio_urls,
    duration_ms=st.integers(0, 10**9),
    gpu_ms=st.integers(0, 10**9),
    error=st.none() | text,
)
worker_infos = st.builds(WorkerInfo, gpu=text, model=text, engine_version=text)
batch_requests = st.builds(
    BatchRequest,
    requests=st.lists(speech_requests(), max_size=3).map(tuple),
    audio_format=st.sampled_from(["wav", "flac"]),
)
batch_responses = st.builds(
    BatchResponse, results=st.lists(results, max_size=4).map(tuple), worker=worker_infos
)
job_handles = st.builds(
    JobHandle,
    target=text,
    job_id=text,
    request_ids=st.lists(text, max_size=4).map(tuple),
    submitted_at=finite,
    extra=st.dictionaries(text, text, max_size=3),
)
job_statuses = st.builds(
    JobStatus,
    state=st.sampled_from(list(JobState)),
    results=st.lists(results, max_size=3).map(tuple),
    error=st.none() | text,
    queue_ms=st.none() | st.integers(0, 10**9),
    exec_ms=st.none() | st.integers(0, 10**9),
)
cost_estimates = st.builds(CostEstimate, target=text, usd=finite, gpu_seconds=finite, basis=text)
healths = st.builds(
    Health,
    ok=st.booleans(),
    detail=text,
    queue_depth=st.none() | st.integers(0, 10**6),
    workers=st.none() | st.integers(0, 10**4),
    checked_at=finite,
    capacity=st.none() | st.integers(1, 10**4),
)

#: (strategy, type) for every wire type, for the round-trip property.
WIRE_TYPES = [
    (audios(), Audio),
    (segments(), Segment),
    (speech_requests(), SpeechRequest),
    (audio_data, AudioData),
    (audio_urls, AudioUrl),
    (results, Result),
    (worker_infos, WorkerInfo),
    (batch_requests, BatchRequest),
    (batch_responses, BatchResponse),
    (job_handles, JobHandle),
    (job_statuses, JobStatus),
    (cost_estimates, CostEstimate),
    (healths, Health),
]

SMALL_LIMITS = WireLimits(
    max_body_bytes=2_000_000,
    max_requests=4,
    max_text_chars=64,
    max_context_segments=3,
    max_context_seconds=0.5,
    max_audio_length_ms=30_000,
    max_audio_bytes=200_000,
    max_decoded_audio_bytes=400_000,
)


@st.composite
def voiced_batch_requests(draw: st.DrawFn) -> BatchRequest:
    """Batches whose requests (some or all) share a context prefix with audio: a voice prompt,
    possibly followed by more shared turns, then each request's own turns."""
    voice = Segment(draw(st.integers(0, 9)), draw(text), draw(audios(max_frames=200)))
    prefix = (voice, *draw(st.lists(segments(), max_size=2)))
    requests = []
    for _ in range(draw(st.integers(1, 4))):
        request = draw(speech_requests(max_context=2))
        if draw(st.booleans()):
            request = SpeechRequest(
                request.text,
                request.speaker,
                prefix[: draw(st.integers(1, len(prefix)))] + request.context,
                request.max_audio_length_ms,
                request.temperature,
                request.topk,
                request.seed,
            )
        requests.append(request)
    return BatchRequest(tuple(requests), draw(st.sampled_from(["wav", "flac"])))
