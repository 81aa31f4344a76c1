"""The command line, run as a user runs it: a subprocess, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KINDS = {"runpod", "thunder", "modal", "local_csm", "espeak", "replicate"}


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "CSM_OFFLOAD_"))}
    return subprocess.run(
        [sys.executable, "-m", "csm_offload", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plugins_lists_the_five_kinds_through_entry_points(tmp_path: Path) -> None:
    result = run("plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) >= KINDS
    for kind in KINDS:
        assert rows[kind]["kind"] == kind
        assert rows[kind]["version"] == "0.1.0"
        assert rows[kind]["dist"] == f"csm-offload-{kind.replace('_', '-')}"
        assert "provider_info" in rows[kind]["hooks"]


def test_plugins_reports_a_broken_plugin_and_lists_the_rest(tmp_path: Path) -> None:
    (tmp_path / "half_done.py").write_text("import a_package_that_is_not_there\n")
    info = tmp_path / "half_done-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: half-done\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[csm_offload]\nhalf = half_done\n")
    result = run("plugins", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert "a_package_that_is_not_there" in rows["half"]["error"]
    assert rows["half"]["version"] == "1.0"
    assert set(rows) >= KINDS


def test_providers_explains_each_target(tmp_path: Path) -> None:
    result = run("providers", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert not rows["runpod"]["usable"]
    assert "RUNPOD_API_KEY" in rows["runpod"]["reason"]
    assert rows["runpod"]["where"] == "remote"
    assert rows["espeak"]["quality"] == "draft"
    table = run("providers", cwd=tmp_path)
    assert table.returncode == 0
    assert "RUNPOD_API_KEY" in table.stdout


def test_providers_uses_the_environment_for_keys(tmp_path: Path) -> None:
    env = {"RUNPOD_API_KEY": "rp-secret-value", "RUNPOD_ENDPOINT_URL": "https://api.runpod.ai/v2/e"}
    result = run("providers", "--json", cwd=tmp_path, env=env)
    assert "RUNPOD_API_KEY" not in result.stdout
    assert "rp-secret-value" not in result.stdout + result.stderr


BAD = """\
audio:
  cloud_gpu:
    max_retries: lots
"""


def test_config_check_exits_2_naming_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "csm-offload.yaml").write_text(BAD)
    result = run("config", "check", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: csm-offload.yaml:3: audio.cloud_gpu.max_retries: expected an integer, got str"
    )
    assert "Traceback" not in result.stderr


def test_config_check_reports_bad_provider_settings(tmp_path: Path) -> None:
    text = "providers:\n  es:\n    kind: espeak\n    voice_name: en\n"
    (tmp_path / "csm-offload.yaml").write_text(text)
    result = run("config", "check", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "csm-offload.yaml:4: providers.es.voice_name: unknown field(s) voice_name" in result.stderr
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "csm-offload.yaml").write_text(BAD)
    result = run("--debug", "providers", "--offline", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "audio.cloud_gpu.max_retries: expected an integer" in result.stderr


def test_config_check_passes_and_lists_unusable_targets(tmp_path: Path) -> None:
    result = run("config", "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK: <built-in default config>")
    assert "runpod: needs" in result.stdout


def test_config_flag_and_missing_file(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "absent.yaml"), "providers", cwd=tmp_path)
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_config_show_prints_the_config_in_use(tmp_path: Path) -> None:
    assert "cloud_gpu:" in run("config", "show", cwd=tmp_path).stdout
    (tmp_path / "mine.yaml").write_text("run:\n  max_usd: 1\n")
    assert run("--config", "mine.yaml", "config", "show", cwd=tmp_path).stdout == (
        "run:\n  max_usd: 1\n"
    )


@pytest.mark.parametrize("args", [["no-such-command"], ["providers", "--bogus"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_version_and_help(tmp_path: Path) -> None:
    assert run("--version", cwd=tmp_path).stdout.strip().endswith("0.1.0")
    help_text = run("--help", cwd=tmp_path).stdout
    for command in ("plugins", "providers", "config"):
        assert command in help_text
    assert "Generate speech with Sesame CSM" in help_text


DEAD = """\
providers:
  down:
    kind: runpod
    endpoint_url: http://127.0.0.1:9/v2/gone
    api_key: ${RUNPOD_API_KEY}
  espeak:
    kind: espeak
"""


def test_providers_asks_health_and_shows_a_down_server_as_unhealthy(tmp_path: Path) -> None:
    (tmp_path / "csm-offload.yaml").write_text(DEAD)
    env = {"RUNPOD_API_KEY": "rp-key-for-a-dead-host"}
    result = run("providers", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["down"]["state"] == "unhealthy" and not rows["down"]["usable"]
    assert rows["down"]["health_checked"]
    assert "RunPod health" in rows["down"]["reason"]
    assert rows["espeak"]["state"] == "usable"
    table = run("providers", cwd=tmp_path, env=env)
    assert "unhealthy" in table.stdout and "yes" not in table.stdout
    assert "rp-key-for-a-dead-host" not in table.stdout + table.stderr + result.stdout


def test_providers_offline_skips_health_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "csm-offload.yaml").write_text(DEAD)
    env = {"RUNPOD_API_KEY": "rp-key-for-a-dead-host"}
    result = run("providers", "--offline", "--json", cwd=tmp_path, env=env)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["down"]["state"] == "usable" and not rows["down"]["health_checked"]
    assert "health not checked: --offline" in rows["down"]["reason"]
    table = run("providers", "--offline", cwd=tmp_path, env=env)
    assert "health not checked (--offline)" in table.stdout


EVERY_ERROR = """\
providers:
  rp:
    kind: runpod
    endpoint_id: abc
    api_key: ${RUNPOD_API_KEY}
    use_runsync: maybe
  es:
    kind: espeak
    rate: fast
    voice_name: en
"""


def test_config_check_lists_every_error_of_every_target(tmp_path: Path) -> None:
    (tmp_path / "csm-offload.yaml").write_text(EVERY_ERROR)
    result = run("config", "check", cwd=tmp_path)
    assert result.returncode == 2
    assert "config OK" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [
        "error: csm-offload.yaml:6: providers.rp.use_runsync: expected true or false, got str",
        "error: csm-offload.yaml:5: providers.rp.api_key: needs RUNPOD_API_KEY: set it in the "
        "environment or in a .env file",
        "error: csm-offload.yaml:9: providers.es.rate: expected an integer, got str",
        "error: csm-offload.yaml:10: providers.es.voice_name: unknown field(s) voice_name",
    ]
    assert "4 errors in csm-offload.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_is_ok_only_when_nothing_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "csm-offload.yaml").write_text(DEAD)
    unset = run("config", "check", cwd=tmp_path)
    assert unset.returncode == 2 and "needs RUNPOD_API_KEY" in unset.stderr
    fine = run("config", "check", cwd=tmp_path, env={"RUNPOD_API_KEY": "a-key-that-is-set"})
    assert fine.returncode == 0, fine.stderr
    assert fine.stdout.startswith("config OK: csm-offload.yaml (2 targets, 2 usable now)")
