"""Meta-tests, as datasette has: every hook is documented in docs/hooks.md and has a test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from csm_offload import hookspecs

from . import test_hooks

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name, fn in vars(hookspecs).items() if hasattr(fn, "csm_offload_spec"))


def test_there_are_hooks() -> None:
    assert set(HOOKS) == {
        "provider_info",
        "estimate_cost",
        "health",
        "submit",
        "poll",
        "decode",
        "cancel",
        "register_commands",
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    docs = (ROOT / "docs" / "hooks.md").read_text("utf-8")
    section = re.search(rf"^## `{hook}\(([^)]*)\)`\n(.*?)(?=^## |\Z)", docs, re.M | re.S)
    assert section, f"docs/hooks.md has no '## `{hook}(...)`' section"
    params = [p.strip() for p in section.group(1).split(",") if p.strip()]
    spec = getattr(hookspecs, hook)
    assert params == list(spec.__code__.co_varnames[: spec.__code__.co_argcount])
    assert "```python" in section.group(2), f"{hook} has no example implementation"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    assert callable(getattr(test_hooks, f"test_hook_{hook}", None))
