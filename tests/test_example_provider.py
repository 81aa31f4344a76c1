"""The example third-party provider, examples/provider_acme, works as docs/hooks.md says.

It is installed, not imported from its directory (`make install-all` installs it editable, as a
plugin author would), so these tests see it the way the application does: through its entry
point. Against its own loopback fake they run the conformance kit (zero failures) and a real
`Runner` synthesis, check that the provider stays under 100 lines, and check that every
provider excerpt in docs/hooks.md is still a verbatim copy of the module.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from csm_offload import Secret, SpeechRequest, Target, Unavailable
from csm_offload.backoff import RetryPolicy
from csm_offload.breaker import Breakers
from csm_offload.config import load_config_text
from csm_offload.health import HealthCache
from csm_offload.journal import Journal
from csm_offload.plugins import load_plugins
from csm_offload.router import RouteOptions, Router
from csm_offload.runner import Runner, RunnerSettings, RunResult
from csm_offload.speed import SpeedBook
from csm_offload.targets import check_targets
from csm_offload.testing import check_provider
from examples.provider_acme.fake_acme import FakeAcme

try:
    import csm_offload_acme as acme
except ImportError:  # pragma: no cover - a setup error, said plainly
    pytest.fail(
        "csm-offload-acme is not installed: run `make install-all` "
        "(or `.venv/bin/pip install -e examples/provider_acme`)",
        pytrace=False,
    )

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "provider_acme"
KEY = "acme-example-key-7d41c"
PROVIDER_HOOKS = ("provider_info", "estimate_cost", "health", "submit", "poll", "decode", "cancel")
SETTINGS = RunnerSettings(
    retry=RetryPolicy(max_retries=4, base_s=0.02, cap_s=0.2),
    first_poll_s=0.05,
    poll_min_s=0.02,
    deadline_s=30.0,
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAcme]:
    with FakeAcme(api_key=KEY, delay_s=0.05) as server:
        yield server


def acme_target(url: str, key: str = KEY) -> Target:
    settings = acme.AcmeSettings(api_key=Secret(key), base_url=url)
    return Target("acme-test", "acme", settings, gpu="A100 80GB")


def test_the_installed_plugin_is_the_example() -> None:
    plugins = load_plugins(["acme"])
    assert not plugins.errors, plugins.errors
    provider = plugins.providers["acme"]
    assert provider.missing == ()
    assert Path(inspect.getfile(acme)).resolve().is_relative_to(EXAMPLE)


def test_acme_conforms_against_its_fake(fake: FakeAcme) -> None:
    before = sum(fake.requests.values())
    assert check_provider(acme, acme_target(fake.url), live=True) == []
    # The round trip really went through the fake: health, submit, polls, cancel.
    assert sum(fake.requests.values()) >= before + 4
    assert fake.requests["POST /v1/jobs"] >= 1


def test_a_refused_key_makes_the_target_unavailable(fake: FakeAcme) -> None:
    async def ask() -> None:
        async with httpx.AsyncClient(timeout=5.0) as http:
            await acme.health(acme_target(fake.url, key="not-the-key"), http)

    with pytest.raises(Unavailable, match="credentials were refused"):
        asyncio.run(ask())


def synthesize(fake: FakeAcme, requests: list[SpeechRequest], tmp: Path) -> RunResult:
    config = load_config_text(
        f"""
providers:
  acme-test:
    kind: acme
    base_url: {fake.url}
    api_key: {KEY}
    seconds_per_char: 0.001
    max_batch: 2
    max_in_flight: 2
""",
        "acme.yaml",
        {},
    )
    plugins = load_plugins(["acme"])
    checks = check_targets(config, plugins.providers)
    assert all(c.usable for c in checks), [c.reason for c in checks]
    router = Router(checks, config.audio.cloud_gpu, HealthCache(60), Breakers(3, 0.3), SpeedBook())

    async def go() -> RunResult:
        with Journal(tmp / "journal.sqlite3") as journal:
            async with httpx.AsyncClient(timeout=5.0) as http:
                runner = Runner(router, journal, http, SETTINGS, RouteOptions(cloud_gpu=True))
                result = await runner.run(requests)
            assert len(journal.cached([r.id for r in requests], "csm")) == len(requests)
            return result

    return asyncio.run(go())


def test_a_runner_synthesis_through_acme_completes(fake: FakeAcme, tmp_path: Path) -> None:
    requests = [SpeechRequest(f"Sentence {i} of the Acme example.") for i in range(5)]
    submitted = fake.requests["POST /v1/jobs"]
    result = synthesize(fake, requests, tmp_path)
    assert result.ok, result.summary()
    assert {o.request_id for o in result.outcomes.values() if o.ok} == {r.id for r in requests}
    # Five requests in batches of at most two: three jobs, none sent twice.
    assert fake.requests["POST /v1/jobs"] - submitted == 3


def code_lines(source: str) -> int:
    """Non-blank lines that are not comments (docstrings count: they are code to read)."""
    lines = (line.strip() for line in source.splitlines())
    return sum(1 for line in lines if line and not line.startswith("#"))


def test_the_provider_is_under_100_lines() -> None:
    source = (EXAMPLE / "csm_offload_acme" / "__init__.py").read_text("utf-8")
    assert all(f"def {hook}(" in source for hook in PROVIDER_HOOKS)
    assert code_lines(source) < 100


def test_the_docs_show_the_example_verbatim() -> None:
    """Every Python block of docs/hooks.md outside `register_commands` and the one-line import
    is cut from the module, and the TOML block from its pyproject.toml."""
    docs = (ROOT / "docs" / "hooks.md").read_text("utf-8")
    module = (EXAMPLE / "csm_offload_acme" / "__init__.py").read_text("utf-8")
    toml = (EXAMPLE / "pyproject.toml").read_text("utf-8")
    sections = re.split(r"^## ", docs, flags=re.M)
    checked = set()
    for section in sections:
        if section.startswith("`register_commands("):
            continue
        for lang, block in re.findall(r"^```(python|toml)\n(.*?)^```", section, re.M | re.S):
            if block.strip() == "from csm_offload import hookimpl":
                continue
            assert block in (module if lang == "python" else toml), block[:200]
            checked |= {hook for hook in PROVIDER_HOOKS if f"def {hook}(" in block}
    assert checked == set(PROVIDER_HOOKS)
    assert "examples/provider_acme" in docs and "tested in CI" in docs
