"""The CSM engine: `SpeechRequest`s in, 24 kHz `Audio` out, one batched `generate` call.

Every worker host (in-process provider, worker server, RunPod handler, Modal app) runs this one
class, so a fix or a speed-up lands everywhere. torch and transformers are imported here only;
importing the plugin package does not import this module.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torchaudio.functional as AF
from transformers import CsmForConditionalGeneration, CsmProcessor, StoppingCriteria
from transformers.utils import logging as hf_logging

from csm_offload import Audio, SpeechRequest, UserError, WorkerInfo
from csm_offload.audio import CSM_SAMPLE_RATE
from csm_offload.errors import TOO_LONG

from .options import DEFAULT_OPTIONS, EngineOptions
from .weights import cached, looks_like_path, missing_directory, weights_status

#: One codec frame is 80 ms of audio (Mimi runs at 12.5 frames per second).
FRAME_MS = 80
#: CSM's context window: prompt tokens plus generated frames must fit in it.
CSM_MAX_TOKENS = 2048
ENGINE_VERSION = "csm-offload-engine/1"
SPECIAL_MARKERS = ("<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>")


class ModelLoadError(UserError):
    """The weights could not be loaded; the message says how to fix it."""


class ContextTooLong(UserError):
    """A request's prompt and audio would not fit CSM's context window."""


@attrs.frozen
class Generated:
    """The outcome of one request: audio, or an error for that request alone."""

    id: str
    audio: Audio | None
    gpu_ms: int = 0
    error: str | None = None


def pick_device(requested: str = "auto") -> str:
    """CUDA, then Apple MPS, then CPU; an explicit choice is checked, never silently changed.

    Health predicts this choice without torch (`device.check_device`): change both together.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} asked for, but torch sees no CUDA GPU")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' asked for, but this torch build has no MPS support")
    if requested != "cpu" and not requested.startswith(("cuda", "mps")):
        raise ModelLoadError(f"device must be auto, cuda, cuda:N, mps or cpu, got {requested!r}")
    return requested


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """bf16 on CUDA (CSM's training precision); float32 elsewhere, where bf16 is slow or patchy."""
    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if requested not in _DTYPES:
        raise ModelLoadError(f"dtype must be auto, {', '.join(_DTYPES)}; got {requested!r}")
    return _DTYPES[requested]


def _hub_token() -> str | None:
    """HF_TOKEN, or the token `hf auth login` stored."""
    from huggingface_hub import get_token

    return get_token()


def load_error_message(model: str, exc: BaseException) -> str:
    """One sentence that names the fix for the usual reasons a model does not load."""
    if looks_like_path(model):
        if not Path(model).expanduser().is_dir():
            return missing_directory(model)
        return f"cannot load CSM from the directory {model}: {type(exc).__name__}: {exc}"
    return (
        f"cannot load {model!r} from Hugging Face ({type(exc).__name__}). sesame/csm-1b is gated: "
        "accept its licence at https://huggingface.co/sesame/csm-1b while logged in, then set "
        "HF_TOKEN to a read token (or download it once with `hf download sesame/csm-1b`), "
        "or set `model` to a local directory that holds the weights"
    )


class _CancelCriteria(StoppingCriteria):
    """Stops generation at the next frame once `event` is set (a cancelled job)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


@attrs.frozen
class _Prepared:
    index: int
    request: SpeechRequest
    conversation: list[dict[str, Any]]
    frames: int


class CsmEngine:
    """A loaded CSM model and its processor. Thread-compatible: one `generate` at a time."""

    def __init__(self, model: Any, processor: Any, options: EngineOptions, device: str) -> None:
        self.model = model
        self.processor = processor
        self.options = options
        self.device = device
        self.max_tokens = min(
            CSM_MAX_TOKENS, int(getattr(model.config, "max_position_embeddings", CSM_MAX_TOKENS))
        )
        self._lock = threading.Lock()

    @classmethod
    def load(cls, options: EngineOptions = DEFAULT_OPTIONS) -> CsmEngine:
        device = pick_device(options.device)
        dtype = pick_dtype(options.dtype, device)
        hf_logging.disable_progress_bar()
        # Cached weights load without asking the Hub (fast, and works offline).
        hub = {"token": os.environ.get("HF_TOKEN") or None}
        if not looks_like_path(options.model):
            if cached(options.model):
                hub["local_files_only"] = True
            elif not _hub_token():
                # The weights are gated: without a token the Hub can only refuse, after minutes
                # of retries when it is out of reach. Say what to do at once.
                raise ModelLoadError(weights_status(options.model)[1])
        try:
            processor = CsmProcessor.from_pretrained(options.model, **hub)
            model = CsmForConditionalGeneration.from_pretrained(options.model, dtype=dtype, **hub)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(load_error_message(options.model, exc)) from None
        # `.to()` rather than `device_map=`: the latter needs accelerate, which we do not ship.
        model = model.to(device).eval()
        if options.static_cache:
            model.generation_config.cache_implementation = "static"
            model.depth_decoder.generation_config.cache_implementation = "static"
        if options.compile:
            model.backbone_model.forward = torch.compile(model.backbone_model.forward)
            model.depth_decoder.forward = torch.compile(model.depth_decoder.forward)
        return cls(model, processor, options, device)

    def info(self) -> WorkerInfo:
        gpu = torch.cuda.get_device_name(0) if self.device.startswith("cuda") else self.device
        return WorkerInfo(gpu=gpu, model=self.options.model, engine_version=ENGINE_VERSION)

    # --- preparing requests -----------------------------------------------------------------

    def conversation(self, request: SpeechRequest) -> list[dict[str, Any]]:
        """The chat-template messages: one per context turn (text + 24 kHz audio), then ours."""
        for text in (request.text, *(s.text for s in request.context)):
            for marker in SPECIAL_MARKERS:
                if marker in text:
                    raise UserError(f"text must not contain the control token {marker}")
        messages = []
        for segment in request.context:
            content: list[dict[str, Any]] = [{"type": "text", "text": segment.text}]
            if segment.audio is not None:
                content.append({"type": "audio", "path": to_24k(segment.audio)})
            messages.append({"role": str(segment.speaker), "content": content})
        messages.append({"role": str(request.speaker), "content": [_text(request.text)]})
        return messages

    def token_count(self, conversation: list[dict[str, Any]]) -> int:
        """Prompt tokens of one conversation, audio frames included (CPU only, no model)."""
        inputs = self.processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
        return int(inputs["input_ids"].shape[-1])

    def prepare(self, request: SpeechRequest, index: int = 0) -> _Prepared:
        """Check one request against CSM's limits; raise `UserError` naming the fix."""
        if any(s.audio is None for s in request.context):
            # CSM's chat template takes one text and one audio item per context turn: it
            # conditions on how the speaker sounded, so text-only context cannot be used.
            raise UserError("every context segment needs its audio (CSM conditions on it)")
        conversation = self.conversation(request)
        frames = max(1, math.ceil(request.max_audio_length_ms / FRAME_MS))
        prompt = self.token_count(conversation)
        if prompt + frames > self.max_tokens:
            # Name settings a user has: the CLI splits text with --max-chars; the length
            # cap is a field of the request, set through the Python API.
            raise ContextTooLong(
                f"{TOO_LONG}: prompt is {prompt} tokens (text and context audio) and "
                f"{frames} frames (max_audio_length_ms={request.max_audio_length_ms}) are "
                "asked for, over "
                f"CSM's {self.max_tokens}-token context: give shorter text (csm-offload synth "
                "--max-chars, e.g. 200) or shorter or fewer context segments"
            )
        return _Prepared(index, request, conversation, frames)

    # --- generating -------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[SpeechRequest], cancel: threading.Event | None = None
    ) -> list[Generated]:
        """Generate every request; one bad request gets its own error, the rest still run.

        Requests that share sampling settings run in one batched call (left padded).
        """
        out: list[Generated | None] = [None] * len(requests)
        ready: list[_Prepared] = []
        for index, request in enumerate(requests):
            try:
                ready.append(self.prepare(request, index))
            except UserError as exc:
                out[index] = Generated(request.id, None, 0, str(exc))
        for group in _groups(ready):
            for item, result in zip(group, self._run_group(group, cancel), strict=True):
                out[item.index] = result
        return [item for item in out if item is not None]

    def _run_group(self, group: list[_Prepared], cancel: threading.Event | None) -> list[Generated]:
        first = group[0].request
        with self._lock:
            inputs = self.processor.apply_chat_template(
                [item.conversation for item in group], tokenize=True, return_dict=True
            ).to(self.device)
            if "input_values" in inputs:
                inputs["input_values"] = inputs["input_values"].to(self.model.dtype)
            kwargs = _sampling_kwargs(first.temperature, first.topk)
            if cancel is not None:
                kwargs["stopping_criteria"] = [_CancelCriteria(cancel)]
            torch.manual_seed(_group_seed(group))
            started = time.perf_counter()
            with torch.inference_mode():
                audio = self.model.generate(
                    **inputs,
                    output_audio=True,
                    max_new_tokens=max(item.frames for item in group),
                    **kwargs,
                )
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed_ms = (time.perf_counter() - started) * 1000
        if cancel is not None and cancel.is_set():
            return [Generated(i.request.id, None, 0, "cancelled") for i in group]
        # Every row of a batch runs for as many steps as the longest: share the time evenly.
        share = round(elapsed_ms / len(group))
        return [_result(item, samples, share) for item, samples in zip(group, audio, strict=True)]


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def to_24k(audio: Audio) -> np.ndarray:
    """Context audio at CSM's 24 kHz (torchaudio's band-limited sinc resampler)."""
    if audio.sample_rate == CSM_SAMPLE_RATE:
        return audio.samples
    tensor = torch.from_numpy(audio.samples.copy())
    resampled = AF.resample(tensor, audio.sample_rate, CSM_SAMPLE_RATE)
    return resampled.numpy().astype(np.float32, copy=False)


def _groups(items: list[_Prepared]) -> list[list[_Prepared]]:
    groups: dict[tuple[float, int], list[_Prepared]] = {}
    for item in items:
        groups.setdefault((item.request.temperature, item.request.topk), []).append(item)
    return list(groups.values())


def _group_seed(group: list[_Prepared]) -> int:
    """One seed per batched call: the request's own seed alone, else a hash of all of them,
    so the same batch always gives the same audio."""
    seeds = [item.request.seed for item in group]
    if len(set(seeds)) == 1:
        return seeds[0] % 2**63
    digest = hashlib.sha256(",".join(map(str, seeds)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


def _sampling_kwargs(temperature: float, topk: int) -> dict[str, Any]:
    # CSM samples both the first codebook (backbone) and the rest (depth decoder) the same way.
    if temperature <= 0:
        return {"do_sample": False, "depth_decoder_do_sample": False}
    return {
        "do_sample": True,
        "temperature": temperature,
        "top_k": topk,
        "depth_decoder_do_sample": True,
        "depth_decoder_temperature": temperature,
        "depth_decoder_top_k": topk,
    }


def _result(item: _Prepared, samples: torch.Tensor, gpu_ms: int) -> Generated:
    limit = item.request.max_audio_length_ms * CSM_SAMPLE_RATE // 1000
    audio = Audio.from_torch(samples[:limit], CSM_SAMPLE_RATE)
    # `Audio` holds samples in [-1, 1]; the codec can overshoot slightly on loud frames.
    clipped = np.clip(audio.samples, -1.0, 1.0)
    return Generated(item.request.id, Audio(clipped, CSM_SAMPLE_RATE), gpu_ms)
