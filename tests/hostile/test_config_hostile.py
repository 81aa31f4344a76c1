"""Hostile configuration files and `--config` values: each one ends in exit 2 with one clear
sentence (no traceback, no `internal error`), never prints a secret it was handed, and leaves
nothing behind (no journal, no output, no temporary file).

Each case is run through `config check` and through `synth` (which must refuse before it makes
anything). Environment values are also property-tested: whatever text a variable holds arrives
in the config exactly as set, never parsed as YAML.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csm_offload import ConfigError
from csm_offload.cli import app as cli_app
from csm_offload.cli import main
from csm_offload.config import load_config_text, read_config_file
from csm_offload.plugins import Plugins
from csm_offload.targets import check_targets
from tests.fake_provider import FakeProvider

Setup = Callable[[Path, pytest.MonkeyPatch], str]
#: Characters that start or change a YAML value, each at the front of a key-like value.
YAML_SPECIAL = ["@", "[", "*", "%", "`", "{", "&", "!", "|", ">", "#", "'", '"', "-", "?", ":"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "espeak")
    monkeypatch.delenv("CSM_OFFLOAD_CONFIG", raising=False)
    return tmp_path


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def _assert_refused(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1, err
    assert expected in errors[0], err


def _write(name: str, text: str | bytes) -> Setup:
    def setup(root: Path, _mp: pytest.MonkeyPatch) -> str:
        data = text.encode() if isinstance(text, str) else text
        (root / name).write_bytes(data)
        return name

    return setup


def _sparse(root: Path, _mp: pytest.MonkeyPatch) -> str:
    # 512 MiB that takes no disk: the size check must come before any read.
    with (root / "huge.yaml").open("wb") as file:
        file.truncate(512 * 1024 * 1024)
    return "huge.yaml"


def _directory(root: Path, _mp: pytest.MonkeyPatch) -> str:
    (root / "conf.d").mkdir()
    return "conf.d"


def _env_in_int(root: Path, mp: pytest.MonkeyPatch) -> str:
    mp.setenv("RETRIES", "@five-retries-please")
    (root / "c.yaml").write_text("audio:\n  cloud_gpu:\n    max_retries: ${RETRIES}\n")
    return "c.yaml"


def _unset_outside_providers(root: Path, _mp: pytest.MonkeyPatch) -> str:
    (root / "c.yaml").write_text("run:\n  max_usd: ${NO_SUCH_BUDGET_VAR}\n")
    return "c.yaml"


@attrs.frozen
class ShadowSettings:
    gpu: str = "A100"


def _shadowing_plugin(root: Path, mp: pytest.MonkeyPatch) -> str:
    real = cli_app.load_plugins

    def with_shadow() -> Plugins:
        plugins = real()
        plugins.register(FakeProvider("shadow", settings_type=ShadowSettings), "shadow")
        return plugins

    mp.setattr(cli_app, "load_plugins", with_shadow)
    (root / "c.yaml").write_text("providers:\n  s:\n    kind: shadow\n    gpu: H100\n")
    return "c.yaml"


def _bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "run:\n  " + "\n  ".join(lines) + "\n"


CASES: dict[str, tuple[Setup, str]] = {
    "deep-flow-list": (
        _write("c.yaml", "run: " + "[" * 50_000 + "]" * 50_000 + "\n"),
        "nested deeper than 40 levels",
    ),
    "deep-flow-map": (
        _write("c.yaml", "run: " + "{a: " * 50_000 + "1" + "}" * 50_000 + "\n"),
        "nested deeper than 40 levels",
    ),
    "deep-block": (
        _write("c.yaml", "".join(f"{'  ' * i}k{i}:\n" for i in range(60)) + "  " * 60 + "x\n"),
        "nested deeper than 40 levels",
    ),
    "sparse-512-MiB": (_sparse, "over 1048576 bytes"),
    "dev-zero": (lambda _r, _m: "/dev/zero", "over 1048576 bytes"),
    "binary": (_write("c.yaml", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "binary file"),
    "invalid-utf8": (_write("c.yaml", b"run:\n  journal: caf\xe9\n"), "not UTF-8"),
    "directory": (_directory, "directory"),
    "missing-file": (lambda _r, _m: "absent.yaml", "does not exist"),
    "duplicate-keys": (
        _write("c.yaml", "providers:\n  a:\n    kind: espeak\n  a:\n    kind: espeak\n"),
        "c.yaml:4: providers.a: duplicate key",
    ),
    "tabs": (_write("c.yaml", "run:\n\tmax_usd: 1\n"), "indent with spaces, not tabs"),
    "alias-bomb": (_write("c.yaml", _bomb()), "alias bomb"),
    "merge-key": (_write("c.yaml", "audio: &a\n  cloud_gpu: {}\nrun:\n  <<: *a\n"), "merge keys"),
    "python-tag": (
        _write("c.yaml", "run:\n  journal: !!python/object/apply:os.system ['echo hi']\n"),
        "c.yaml:2",
    ),
    "two-documents": (_write("c.yaml", "run: {}\n---\nrun: {}\n"), "not valid YAML"),
    "top-level-list": (_write("c.yaml", "- 1\n- 2\n"), "the file must be a mapping"),
    "env-value-in-int-field": (_env_in_int, "audio.cloud_gpu.max_retries: expected an integer"),
    "unset-var-outside-providers": (_unset_outside_providers, "${NO_SUCH_BUDGET_VAR} is not set"),
    "shadowing-plugin-setting": (_shadowing_plugin, "settings field `gpu` of ShadowSettings"),
}
#: Where `synth` says it differently (none now: it quotes the plugin's load error too).
SYNTH_EXPECTED: dict[str, str] = {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_config_is_refused_in_one_sentence(
    case: str,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup, expected = CASES[case]
    config = setup(workdir, monkeypatch)
    before = _files(workdir)
    synth = ["synth", "Hello there.", "-o", "out.wav", "--quiet"]
    for command in (["config", "check"], synth):
        code, _out, err = _cli(capsys, "--config", config, *command)
        if command is synth:
            expected = SYNTH_EXPECTED.get(case, expected)
        if case == "directory" and "Invalid value for '--config'" in err:
            # click refuses it before the command runs: its usage message, exit 2.
            assert code == 2 and "is a directory" in err and "Traceback" not in err
            continue
        _assert_refused(code, err, expected)
    assert _files(workdir) == before, "something was written"


def test_shadowing_setting_is_a_load_error_naming_field_and_fix(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _shadowing_plugin(workdir, monkeypatch)
    code, out, _err = _cli(capsys, "plugins")
    assert code == 0
    assert "settings field `gpu` of ShadowSettings" in out
    assert "rename the field" in out and "shadow_gpu" in out


@pytest.mark.parametrize("char", YAML_SPECIAL)
def test_env_values_starting_with_yaml_syntax_never_crash_or_print(
    char: str,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = f"{char}hostile-key-{ord(char)} #tail"
    monkeypatch.setenv("RUNPOD_API_KEY", secret)
    monkeypatch.setenv("CSM_OFFLOAD_LOAD_PLUGINS", "runpod")
    (workdir / "c.yaml").write_text(
        "providers:\n  rp:\n    kind: runpod\n    endpoint_id: abc\n"
        "    api_key: ${RUNPOD_API_KEY}\n    max_batch: ${RUNPOD_API_KEY}\n"
    )
    code, out, err = _cli(capsys, "--config", "c.yaml", "config", "check")
    assert code == 2, err
    assert "c.yaml:6: providers.rp.max_batch: expected an integer" in err
    assert "Traceback" not in err and "internal error" not in err
    assert secret not in out + err and f"{char}hostile-key" not in out + err


# --- values arrive exactly as set --------------------------------------------------------


@attrs.frozen
class KeyedSettings:
    api_key: str
    note: str = ""


@pytest.mark.parametrize(
    "value",
    ["@x", "[a", "*b", "%c", "`d`", "pass #word", " spaced ", "123456", "yes", "null", "~", ""],
)
def test_special_values_come_through_as_the_exact_string(value: str) -> None:
    text = "audio:\n  cloud_gpu:\n    provider: ${V}\n"
    assert load_config_text(text, "t.yaml", {"V": value}).audio.cloud_gpu.provider == value


_any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
#: Text written in the YAML itself: what a double-quoted scalar keeps as it is (YAML folds
#: line breaks there, which is YAML's business, not the substitution's).
_literal_text = st.text(
    st.characters(whitelist_categories=("L", "N", "P", "S"), whitelist_characters=" "),
    max_size=20,
).filter(lambda t: "$" not in t)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(value=_any_text, prefix=_literal_text)
def test_env_substitution_round_trips_any_text(value: str, prefix: str) -> None:
    env = {"V": value}
    whole = "audio:\n  cloud_gpu:\n    provider: ${V}\n"
    quoted = 'audio:\n  cloud_gpu:\n    provider: "${V}"\n'
    assert load_config_text(whole, "t.yaml", env).audio.cloud_gpu.provider == value
    assert load_config_text(quoted, "t.yaml", env).audio.cloud_gpu.provider == value
    # Inside other text (the prefix is YAML-quoted so that it stays text).
    escaped = prefix.replace("\\", "\\\\").replace('"', '\\"')
    mixed = f'audio:\n  cloud_gpu:\n    provider: "{escaped}${{V}}!"\n'
    loaded = load_config_text(mixed, "t.yaml", env).audio.cloud_gpu.provider
    assert loaded == prefix + value + "!"


@settings(max_examples=100)
@given(value=_any_text)
def test_provider_settings_receive_env_text_exactly(value: str) -> None:
    plugins = Plugins()
    assert plugins.register(FakeProvider("keyed", settings_type=KeyedSettings), "keyed")
    text = "providers:\n  k:\n    kind: keyed\n    api_key: ${K}\n    note: x-${K}\n"
    config = load_config_text(text, "t.yaml", {"K": value})
    [check] = check_targets(config, plugins.providers)
    assert check.target is not None, check.reason
    assert check.target.settings.api_key == value
    assert type(check.target.settings.api_key) is str
    assert check.target.settings.note == f"x-{value}"


def test_a_whole_var_still_converts_for_typed_fields() -> None:
    text = "audio:\n  cloud_gpu:\n    max_retries: ${R}\n    enabled: ${E}\nrun:\n  max_usd: ${U}\n"
    config = load_config_text(text, "t.yaml", {"R": " 7 ", "E": "no", "U": "2.5"})
    assert config.audio.cloud_gpu.max_retries == 7
    assert config.audio.cloud_gpu.enabled is False
    assert config.run.max_usd == 2.5


def test_sparse_file_is_refused_without_reading_it(workdir: Path) -> None:
    _sparse(workdir, pytest.MonkeyPatch())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match="over 1048576 bytes"):
        read_config_file(workdir / "huge.yaml")
    # Reading it would have raised the peak by 512 MiB (ru_maxrss is in KiB on Linux).
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024
