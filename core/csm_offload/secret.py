"""`Secret`: a credential that never shows its value in a repr, a log line or an error."""

from __future__ import annotations

import attrs

from . import scrub


@attrs.frozen(repr=False)
class Secret:
    """Wraps a credential. Only `reveal()` gives the value, and only to the code that sends it."""

    _value: str = attrs.field(alias="value")

    def __attrs_post_init__(self) -> None:
        # Every credential the process holds is known to the scrubber from the moment it
        # exists, so whatever text later quotes it (an echoed header, an error) is masked.
        scrub.register(self._value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __format__(self, _spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> tuple:
        # Pickling would write the value to disk or a pipe; refuse rather than leak.
        raise TypeError("a Secret cannot be pickled")
