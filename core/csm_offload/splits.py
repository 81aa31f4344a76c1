"""Requests too long for one request, split into parts whose audio is joined again.

A provider or worker that says a request's text is too long for one request (`TooLong`, or a
per-request error containing `TOO_LONG`) is not the end of that request: its text is split at
its best break near the middle (sentence, clause, then space; `chunking.chunk_text`) into
parts with the same speaker, context and settings, the parts are generated like any other
request (and split again if still too long), and their audio, joined with a short pause, is the
original request's result. Bookkeeping only: the runner generates, joins and journals.
"""

from __future__ import annotations

import attrs

from .chunking import chunk_text
from .errors import UserError
from .model import SpeechRequest


class Splits:
    def __init__(self) -> None:
        self._parts: dict[str, list[str]] = {}
        self._parent: dict[str, str] = {}
        self._done: dict[str, object] = {}

    def split(self, request: SpeechRequest) -> list[SpeechRequest] | None:
        """The parts of `request`, or None when its text cannot be split further."""
        try:
            texts = chunk_text(request.text, max(1, len(request.text) // 2))
        except UserError:
            return None
        if len(texts) < 2:
            return None
        parts = [attrs.evolve(request, text=text, id="") for text in texts]
        if len({p.id for p in parts}) < len(parts) or request.id in {p.id for p in parts}:
            return None  # identical halves would be one request: splitting cannot help
        self._parts[request.id] = [p.id for p in parts]
        for part in parts:
            self._parent[part.id] = request.id
        return parts

    def parent_of(self, request_id: str) -> str | None:
        return self._parent.get(request_id)

    def root_of(self, request_id: str) -> str:
        """The request the user asked for, above any number of splits."""
        while request_id in self._parent:
            request_id = self._parent[request_id]
        return request_id

    def finished(self, part_id: str, outcome: object) -> list[object] | None:
        """Record a part's outcome; when every part of its parent is in, return their outcomes
        in text order (the parent can then be joined), else None."""
        self._done[part_id] = outcome
        parent = self._parent[part_id]
        ids = self._parts[parent]
        if not all(i in self._done for i in ids):
            return None
        return [self._done[i] for i in ids]
