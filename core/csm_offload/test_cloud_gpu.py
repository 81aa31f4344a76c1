"""`python -m csm_offload.test_cloud_gpu`: the original `src/test_cloud_gpu.py`, run by
`csm-offload doctor`.

For every configured target it checks the config, asks its health (with the latency) and
generates one test sentence on that target alone (its wall time, audio length and cost), then
writes the results to `cloud_gpu_test_results.json` in the current directory, where the
original wrote them. Options of `doctor` may follow: `--target NAME`, `--no-generate`,
`--text`, `--timeout`, `--json OTHER.json` (instead of the default file); `--config PATH` and
`--debug` belong to the command line. It exits 0 when every checked target passed, 1 when one
failed its health check or its sentence, 2 for a problem to fix (the message names it).

This is a command, not a test module: pytest collects only `tests/` (and nothing here).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import main as cli_main
from .pipeline import split_globals

__test__ = False

RESULTS_FILE = "cloud_gpu_test_results.json"


def doctor_args(argv: Sequence[str]) -> list[str]:
    """The `csm-offload` arguments for `argv`: doctor, writing the original's results file."""
    front, rest = split_globals(argv)
    if not any(arg == "--json" or arg.startswith("--json=") for arg in rest):
        rest = [*rest, "--json", RESULTS_FILE]
    return [*front, "doctor", *rest]


def main(argv: Sequence[str] | None = None) -> None:
    cli_main(doctor_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
