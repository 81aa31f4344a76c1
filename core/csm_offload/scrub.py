"""One scrubber for the whole process: every known secret, and its common encodings, becomes `***`.

Secrets reach text by routes no single check can close: a provider's 5xx body that echoes the
request headers, an exception message that quotes a setting, a plugin's `Health.detail`. So
instead of trusting each producer, every exit (the CLI's streams and error lines, the journal's
text columns, the sidecar JSON, health details) passes its text through `scrub()`, which knows
every value that must never leave the process:

- each `Secret` as it is created (`secret.py` registers it),
- each environment value the config interpolates into a secret-typed or secret-named field,
- the conventional credential variables (`CONVENTIONAL_ENV`) when they are set.

Values shorter than `MIN_SECRET_CHARS` are not registered: masking every `abc` in a report
would garble it and protect nothing (a key that short is guessable anyway).

The registered values and their encodings are compiled into one regular expression whose
alternatives are factored into a trie, so a scan costs about one pass over the text however many
secrets there are. It is rebuilt lazily, on the first scrub after a registration.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, TextIO

MASK = "***"
MIN_SECRET_CHARS = 6
#: Credentials the project reads from the environment under their providers' own names.
CONVENTIONAL_ENV = (
    "RUNPOD_API_KEY",
    "MODAL_KEY",
    "MODAL_SECRET",
    "TNR_API_TOKEN",
    "HF_TOKEN",
    "REPLICATE_API_TOKEN",
    "CSM_OFFLOAD_WORKER_TOKEN",
)
#: An environment variable whose name says it holds a credential, wherever it is interpolated.
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
#: Shifted base64 fragments shorter than this are not masked: they would match ordinary text.
_MIN_FRAGMENT = 8

# Header echoes are masked even for values nobody registered (a plugin's own token, a key set
# after the scrubber was built): `Authorization: Bearer x`, `'authorization': 'Basic x'`, and
# Modal's proxy-auth headers. A bare `Authorization: <value>` needs a long token-like value so
# that prose such as "authorization: the key was refused" stays readable.
_HEADER_ECHO = re.compile(
    r"""(?ix)
    (\b(?:proxy-)?authorization\b["']?\s*[:=]\s*["']?)
    (?:
        ((?:bearer|basic|token)\s+)([^\s"',;}\]\\]+)
      | ([A-Za-z0-9._~+/=-]{16,})
    )
    |
    (\bmodal-(?:key|secret)\b["']?\s*[:=]\s*["']?)([^\s"',;}\]\\]+)
    """
)


def _header_echo(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        if match.group(2) is not None:
            return f"{match.group(1)}{match.group(2)}{MASK}"
        return f"{match.group(1)}{MASK}"
    return f"{match.group(5)}{MASK}"


def _b64_fragments(raw: bytes) -> set[str]:
    """The parts of a base64 text that depend only on `raw`, at each of the three alignments it
    can have inside a longer encoded blob (`Basic base64(user:key)`, a JSON blob, ...)."""
    found: set[str] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        found.add(encode(raw).decode("ascii").rstrip("="))
        for offset, drop in ((1, 2), (2, 3)):
            total = offset + len(raw)
            text = encode(b"\0" * offset + raw).decode("ascii")[: 4 * (total // 3)][drop:]
            if len(text) >= _MIN_FRAGMENT:
                found.add(text)
        # The last group's characters depend on what follows; the full groups do not.
        whole = encode(raw).decode("ascii")[: 4 * (len(raw) // 3)]
        if len(whole) >= _MIN_FRAGMENT:
            found.add(whole)
    return found


def encodings(value: str) -> set[str]:
    """`value` and the forms it takes in headers, URLs, JSON and base64."""
    raw = value.encode("utf-8")
    found = {value}
    found |= _b64_fragments(raw)
    found |= _b64_fragments(b"Bearer " + raw)
    found.add(urllib.parse.quote(value, safe=""))
    found.add(urllib.parse.quote_plus(value, safe=""))
    found.add(json.dumps(value)[1:-1])
    found.add(json.dumps(value, ensure_ascii=False)[1:-1])
    found.add(repr(value)[1:-1])
    # An error snippet cut short ("...Bearer rp_abc12…") still carries most of the key.
    for end in range(max(_MIN_FRAGMENT, len(value) // 2), len(value)):
        found.add(value[:end] + "…")
        found.add(value[:end] + "...")
    return {f for f in found if f}


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching any of `words`, longest first, factored by common prefixes so that the
    engine tries one branch per character instead of every word at every position."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def render(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [re.escape(char) + render(child) for char, child in node.items() if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if ends:
            return f"(?:{body})?"
        return body

    return render(trie)


class Scrubber:
    """The registry of secret values and the compiled pattern that masks them."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None
        self._dirty = False

    def register(self, value: str | None) -> None:
        """Mask `value` (and its encodings) in everything scrubbed from now on."""
        if not isinstance(value, str) or len(value.strip()) < MIN_SECRET_CHARS:
            return
        with self._lock:
            if value not in self._values:
                self._values.add(value)
                self._dirty = True

    def register_data(self, data: Any) -> None:
        """Register every string (and number, as written) inside `data`."""
        if isinstance(data, str):
            self.register(data)
        elif isinstance(data, int | float) and not isinstance(data, bool):
            self.register(str(data))
        elif isinstance(data, Mapping):
            for value in data.values():
                self.register_data(value)
        elif isinstance(data, list | tuple):
            for value in data:
                self.register_data(value)

    def register_env(self, env: Mapping[str, str] | None = None) -> None:
        """Register the conventional credential variables that are set in `env`."""
        source = os.environ if env is None else env
        for name in CONVENTIONAL_ENV:
            self.register(source.get(name))

    def forget_all(self) -> None:
        """Empty the registry (tests only: a process never un-learns a secret)."""
        with self._lock:
            self._values.clear()
            self._pattern = None
            self._dirty = False

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def _compiled(self) -> re.Pattern[str] | None:
        if not self._dirty:
            return self._pattern
        with self._lock:
            if self._dirty:
                words: set[str] = set()
                for value in self._values:
                    words |= encodings(value)
                self._pattern = re.compile(_trie_pattern(words)) if words else None
                self._dirty = False
            return self._pattern

    def scrub(self, text: str) -> str:
        """`text` with every registered secret, its encodings and header echoes masked."""
        if not text:
            return text
        pattern = self._compiled()
        if pattern is not None:
            text = pattern.sub(MASK, text)
        return _HEADER_ECHO.sub(_header_echo, text)

    def scrub_data(self, data: Any) -> Any:
        """`data` (JSON-like: dicts, lists, strings) with every string scrubbed, keys included."""
        if isinstance(data, str):
            return self.scrub(data)
        if isinstance(data, Mapping):
            return {self.scrub_data(k): self.scrub_data(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.scrub_data(v) for v in data]
        return data


SCRUBBER = Scrubber()
register = SCRUBBER.register
register_data = SCRUBBER.register_data
register_env = SCRUBBER.register_env
scrub = SCRUBBER.scrub
scrub_data = SCRUBBER.scrub_data


class ScrubbingStream(io.TextIOBase):
    """A text stream that scrubs what passes through it on its way to `inner`.

    Text is held until a newline or a flush, so a secret written in two pieces (a rich table
    cell split across writes) is still seen whole; everything else is the inner stream's."""

    def __init__(self, inner: TextIO, scrubber: Scrubber = SCRUBBER) -> None:
        super().__init__()
        self.inner = inner
        self._scrubber = scrubber
        self._pending = ""
        self._lock = threading.RLock()

    def write(self, text: str) -> int:  # type: ignore[override]
        with self._lock:
            self._pending += text
            cut = self._pending.rfind("\n") + 1
            if cut:
                ready, self._pending = self._pending[:cut], self._pending[cut:]
                self.inner.write(self._scrubber.scrub(ready))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                ready, self._pending = self._pending, ""
                self.inner.write(self._scrubber.scrub(ready))
            self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.inner, "errors", None)

    def __getattr__(self, name: str) -> Any:
        if name == "buffer":
            # A caller that finds the binary buffer (click re-wrapping a stream it thinks is
            # misconfigured) would write around the scrubber.
            raise AttributeError(name)
        return getattr(self.inner, name)


@contextmanager
def scrubbed_std_streams() -> Iterator[None]:
    """Route `sys.stdout` and `sys.stderr` through the scrubber for the duration."""
    saved = sys.stdout, sys.stderr
    out, err = ScrubbingStream(saved[0]), ScrubbingStream(saved[1])
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        yield
    finally:
        for stream in (out, err):
            # A closed pipe: nothing more can be said anyway.
            with suppress(OSError, ValueError):
                stream.flush()
        sys.stdout, sys.stderr = saved
