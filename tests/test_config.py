"""Configuration: the seed's block loads as it is; every error names the file, line and key."""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from csm_offload import ConfigError, Secret
from csm_offload.config import interpolate, load_config, load_config_text
from csm_offload.plugins import Plugins, load_plugins
from csm_offload.targets import check_targets

from .conftest import registered
from .fake_provider import FakeProvider

SEED = """\
audio:
  cloud_gpu:
    enabled: true
    provider: "runpod"
    fallback_to_local: true
    max_retries: 3
    batch_processing:
      enabled: true
      max_batch_size: 5
    parallel_workers: 3
"""

WITH_PROVIDERS = (
    SEED
    + """\
providers:
  runpod-eu:
    kind: runpod
    endpoint_url: ${RUNPOD_ENDPOINT_URL}
    api_key: ${RUNPOD_API_KEY}
    gpu: H100
    max_in_flight: 50
  espeak:
    kind: espeak
    voice: en-gb
run:
  max_usd: 2.5
"""
)

ENV = {"RUNPOD_ENDPOINT_URL": "https://api.runpod.ai/v2/abc123/run", "RUNPOD_API_KEY": "rp_sk"}


def load(text: str, env: dict[str, str] | None = None):
    return load_config_text(text, "test.yaml", env or {})


def test_the_seed_block_loads_as_it_is() -> None:
    config = load(SEED)
    cloud = config.audio.cloud_gpu
    assert cloud.enabled and cloud.fallback_to_local
    assert cloud.provider == "runpod"
    assert cloud.max_retries == 3 and cloud.parallel_workers == 3
    assert cloud.batch_processing.max_batch_size == 5
    assert config.providers == ()


@attrs.frozen
class KeyedSettings:
    api_key: Secret
    endpoint_url: str


def test_providers_become_targets_with_typed_settings(plugins: Plugins) -> None:
    config = load(WITH_PROVIDERS.replace("kind: runpod", "kind: keyed"), ENV)
    keyed = FakeProvider("keyed", settings_type=KeyedSettings)
    with registered(plugins, keyed, "keyed"):
        checks = {c.name: c for c in check_targets(config, plugins.providers)}
    target = checks["runpod-eu"].target
    assert target is not None, checks["runpod-eu"].reason
    assert target.gpu == "H100" and target.max_in_flight == 50 and target.max_batch == 4
    assert target.settings.endpoint_url == ENV["RUNPOD_ENDPOINT_URL"]
    assert target.settings.api_key.reveal() == "rp_sk"
    assert "rp_sk" not in repr(target)
    assert "no plugin for kind 'espeak'" in checks["espeak"].reason
    assert config.run.max_usd == 2.5


def test_a_target_missing_its_key_is_unusable_not_an_error() -> None:
    config = load(WITH_PROVIDERS, {})
    checks = {c.name: c for c in check_targets(config, load_plugins().providers)}
    assert not checks["runpod-eu"].usable
    assert not checks["runpod-eu"].invalid
    assert "RUNPOD_API_KEY" in checks["runpod-eu"].reason


def _error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(text, env)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            SEED.replace("max_retries: 3", "max_retries: three"),
            "test.yaml:6: audio.cloud_gpu.max_retries: expected an integer, got str",
        ),
        (
            SEED.replace("enabled: true", "enabled: yes please", 1),
            "test.yaml:3: audio.cloud_gpu.enabled: expected true or false, got str",
        ),
        (
            SEED.replace("parallel_workers", "paralel_workers"),
            "test.yaml:10: audio.cloud_gpu.paralel_workers: unknown field(s) paralel_workers",
        ),
        (
            SEED + "extras: 1\n",
            "test.yaml:11: extras: unknown key; expected audio, providers, run or voices",
        ),
        (SEED + "audio: {}\n", "test.yaml:11: audio: duplicate key"),
        ("audio:\n  cloud_gpu: [1, 2\n", "test.yaml:3: not valid YAML"),
        ("- 1\n- 2\n", "test.yaml:1: (top level): the file must be a mapping"),
        ("providers:\n  x:\n    gpu: A40\n", "test.yaml:2: providers.x: missing `kind`"),
        ("providers: [1]\n", "test.yaml:1: providers: expected a mapping"),
        ("run:\n  max_usd: ${BUDGET}\n", "test.yaml:2: run.max_usd: ${BUDGET} is not set"),
        (
            "providers:\n  x:\n    kind: espeak\n    usd_per_hour: 1\n    usd_per_second: 1\n",
            "test.yaml:2: providers.x: give usd_per_second or usd_per_hour, not both",
        ),
        ("audio: &a\n  <<: *a\n", "merge keys"),
        ("? [1, 2]\n: x\n", "keys must be strings"),
    ],
    ids=[
        "wrong-int",
        "wrong-bool",
        "unknown-nested-key",
        "unknown-top-key",
        "duplicate",
        "syntax",
        "not-a-mapping",
        "missing-kind",
        "providers-not-mapping",
        "unset-env",
        "both-prices",
        "merge-keys",
        "non-string-key",
    ],
)
def test_each_kind_of_error_gives_its_message(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_provider_setting_errors_name_the_line() -> None:
    text = "providers:\n  rp:\n    kind: runpod\n    api_key: k\n    endpoint: x\n"
    config = load(text)
    [check] = check_targets(config, load_plugins().providers)
    assert check.invalid
    assert "test.yaml:5: providers.rp.endpoint: unknown field(s) endpoint" in check.reason
    text = "providers:\n  es:\n    kind: espeak\n    rate: fast\n"
    [check] = check_targets(load(text), load_plugins().providers)
    assert "test.yaml:4: providers.es.rate: expected an integer, got str" in check.reason


def test_unknown_kind_says_which_package_to_install() -> None:
    [check] = check_targets(load("providers:\n  r:\n    kind: replicate\n"), {})
    assert "pip install csm-offload-replicate" in check.reason


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = "run:\n  " + "\n  ".join(lines) + "\n"
    started = time.perf_counter()
    message = _error(bomb)
    assert time.perf_counter() - started < 2.0
    assert "alias bomb" in message


def test_oversize_and_deep_files_are_refused() -> None:
    assert "over 1048576 bytes" in _error("#" * (1024 * 1024 + 1))
    assert "nested deeper" in _error("run: " + "[" * 60 + "]" * 60 + "\n")


def test_env_interpolation_types_whole_values_and_defaults() -> None:
    text = SEED.replace("max_retries: 3", "max_retries: ${RETRIES}").replace(
        'provider: "runpod"', 'provider: "${PROVIDER:-modal}"'
    )
    config = load(text, {"RETRIES": "7"})
    assert config.audio.cloud_gpu.max_retries == 7
    assert config.audio.cloud_gpu.provider == "modal"
    quoted = SEED.replace("max_retries: 3", 'max_retries: "${RETRIES}"')
    assert "expected an integer, got str" in _error(quoted, {"RETRIES": "7"})


def test_dotenv_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "csm-offload.yaml").write_text(WITH_PROVIDERS)
    (tmp_path / ".env").write_text(
        "RUNPOD_API_KEY=from-dotenv\nRUNPOD_ENDPOINT_URL=https://api.runpod.ai/v2/x\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.delenv("RUNPOD_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    config = load_config()
    spec = next(s for s in config.providers if s.name == "runpod-eu")
    assert spec.settings["api_key"] == "from-dotenv"
    monkeypatch.setenv("RUNPOD_API_KEY", "from-env")
    spec = next(s for s in load_config().providers if s.name == "runpod-eu")
    assert spec.settings["api_key"] == "from-env"


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_builtin_default_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    config = load_config()
    assert config.source == "<built-in default config>"
    assert {s.kind for s in config.providers} >= {"runpod", "local_csm", "espeak"}


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
values = st.text(alphabet=st.characters(blacklist_characters="$"), max_size=20)


@given(st.dictionaries(names, values, min_size=1, max_size=4), st.data())
def test_interpolation_substitutes_every_set_name(env: dict[str, str], data) -> None:
    name = data.draw(st.sampled_from(sorted(env)))
    prefix, suffix = data.draw(values), data.draw(values)
    missing: set[str] = set()
    assert interpolate(f"{prefix}${{{name}}}{suffix}", env, missing) == prefix + env[name] + suffix
    assert not missing


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=50))
def test_interpolation_leaves_plain_text_alone(text: str) -> None:
    missing: set[str] = set()
    assert interpolate(text, {}, missing) == text
    assert not missing


@given(names, values)
def test_interpolation_default_applies_only_when_unset(name: str, default: str) -> None:
    default = default.replace("}", "")
    missing: set[str] = set()
    assert interpolate(f"${{{name}:-{default}}}", {}, missing) == default
    assert interpolate(f"${{{name}:-{default}}}", {name: "set"}, missing) == "set"
    assert interpolate(f"${{{name}}}", {}, missing) == ""
    assert missing == {name}


# --- every error, not the first -------------------------------------------------------------

MANY_ERRORS = """\
audio:
  cloud_gpu:
    max_retries: lots
    parallel_workers: many
providers:
  rp:
    kind: runpod
    api_key: ${UNSET_KEY_FOR_TEST}
    endpoint_id: abc
    use_runsync: maybe
    endpont: typo
  es:
    kind: espeak
    rate: fast
    max_batch: big
  nokind:
    gpu: A40
extra: 1
"""


def test_a_lenient_load_keeps_every_error_with_its_line() -> None:
    config = load_config_text(MANY_ERRORS, "test.yaml", {}, strict=False)
    assert config.errors == (
        "test.yaml:18: extra: unknown key; expected audio, providers, run or voices",
        "test.yaml:3: audio.cloud_gpu.max_retries: expected an integer, got str",
        "test.yaml:4: audio.cloud_gpu.parallel_workers: expected an integer, got str",
    )
    checks = {
        c.name: c for c in check_targets(config, load_plugins(["runpod", "espeak"]).providers)
    }
    rp = checks["rp"]
    # The unset key is one problem among the others, not a reason to hide them.
    assert rp.needs == ("needs UNSET_KEY_FOR_TEST: set it in the environment or in a .env file",)
    assert rp.errors == (
        "test.yaml:10: providers.rp.use_runsync: expected true or false, got str",
        "test.yaml:11: providers.rp.endpont: unknown field(s) endpont",
    )
    assert checks["es"].errors == (
        "test.yaml:15: providers.es.max_batch: expected an integer, got str",
        "test.yaml:14: providers.es.rate: expected an integer, got str",
    )
    assert checks["nokind"].errors[0].startswith("test.yaml:16: providers.nokind: missing `kind`")


def test_a_strict_load_raises_the_first_error_in_the_file() -> None:
    assert "test.yaml:3: audio.cloud_gpu.max_retries" in _error(MANY_ERRORS)


def test_an_unset_key_does_not_echo_as_a_wrong_value() -> None:
    text = "providers:\n  rp:\n    kind: runpod\n    api_key: ${UNSET_KEY_FOR_TEST}\n"
    text += "    endpoint_url: ${UNSET_URL_FOR_TEST}\n"
    [check] = check_targets(load(text), load_plugins(["runpod"]).providers)
    assert check.errors == () and not check.invalid
    assert check.reason == (
        "needs UNSET_KEY_FOR_TEST and UNSET_URL_FOR_TEST: set them in the environment or in a "
        ".env file"
    )


def test_a_settings_check_error_points_at_its_field() -> None:
    text = "providers:\n  rp:\n    kind: runpod\n    endpoint_id: abc\n    api_key: ''\n"
    [check] = check_targets(load(text), load_plugins(["runpod"]).providers)
    assert check.errors == (
        "test.yaml:5: providers.rp.api_key: empty; set RUNPOD_API_KEY or the target's api_key",
    )


def test_env_values_are_never_parsed_as_yaml() -> None:
    text = WITH_PROVIDERS.replace("kind: runpod", "kind: keyed")
    for value in ("@x", "[a", "*b", "%c", "`d", "pass #word", " spaced ", "123456", "yes", "null"):
        env = {**ENV, "RUNPOD_API_KEY": value}
        assert load(text, env).providers[0].settings["api_key"] == value


def test_secret_settings_fed_from_the_environment_are_scrubbed() -> None:
    from csm_offload.scrub import scrub

    key = "keyed-env-secret-123"
    config = load(
        WITH_PROVIDERS.replace("kind: runpod", "kind: keyed"), {**ENV, "RUNPOD_API_KEY": key}
    )
    keyed = FakeProvider("keyed", settings_type=KeyedSettings)
    plugins = Plugins()
    with registered(plugins, keyed, "keyed"):
        check_targets(config, plugins.providers)
    assert scrub(f"echo {key}") == "echo ***"


def test_fifty_thousand_levels_of_flow_nesting_are_one_error() -> None:
    message = _error("run: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert message.startswith("test.yaml:1: nested deeper than 40 levels")
