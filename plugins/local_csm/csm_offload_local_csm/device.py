"""Which device the engine would run on, predicted without importing torch.

The local target's health is checked in every run that configures it, cloud-only runs
included, and importing torch costs about a second and 700 MB of memory. So these checks ask
the operating system instead: the NVIDIA driver's /proc entries or `nvidia-smi -L`, the installed
torch build's `version.py` (read as text), and the platform for MPS. `engine.pick_device` still
decides with torch when the engine loads; `check_device` predicts its answer, `auto` included.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import attrs

#: One directory per GPU while the NVIDIA kernel driver is loaded (native Linux).
NVIDIA_PROC_DIR = Path("/proc/driver/nvidia/gpus")
#: The ROCm kernel driver's device node: how a ROCm build of torch reaches an AMD GPU.
ROCM_DEVICE = Path("/dev/kfd")
#: A wedged driver can make nvidia-smi hang; health must still answer quickly.
NVIDIA_SMI_TIMEOUT_S = 3.0
#: MPS needs macOS 12.3 or later (torch.backends.mps.is_available() is False before it).
MPS_MIN_MACOS = (12, 3)
DEVICE_NAMES = "auto, cuda, cuda:N, mps or cpu"
DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::(\d+))?")
_FIX = "set device: cpu or auto"


@attrs.frozen
class GpuProbe:
    """NVIDIA GPUs on this machine: how many, and how that was found (or why none were)."""

    count: int
    source: str


@attrs.frozen
class TorchBuild:
    """What the installed torch wheel was built for, from its generated `torch/version.py`."""

    version: str | None
    cuda: str | None
    hip: str | None


@attrs.frozen
class DeviceCheck:
    """Can the engine run on the requested device, where would it run, and a sentence saying so."""

    ok: bool
    device: str
    detail: str


def probe_nvidia() -> GpuProbe:
    """Count NVIDIA GPUs from the driver's /proc entries, else from `nvidia-smi -L`.

    /proc is read first because it costs nothing; nvidia-smi covers hosts without it (WSL).
    """
    try:
        entries = list(NVIDIA_PROC_DIR.iterdir())
    except OSError:
        entries = []
    if entries:
        return GpuProbe(len(entries), str(NVIDIA_PROC_DIR))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return GpuProbe(0, f"no {NVIDIA_PROC_DIR} and no nvidia-smi")
    try:
        done = subprocess.run(
            [smi, "-L"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return GpuProbe(0, f"nvidia-smi -L did not answer within {NVIDIA_SMI_TIMEOUT_S:g} s")
    except OSError as exc:
        return GpuProbe(0, f"nvidia-smi could not run: {exc}")
    gpus = [line for line in done.stdout.splitlines() if line.startswith("GPU ")]
    if done.returncode == 0 and gpus:
        return GpuProbe(len(gpus), "nvidia-smi -L")
    said = (done.stdout.strip() or done.stderr.strip()).splitlines()
    reason = f": {said[0]}" if said else f" (exit status {done.returncode})"
    return GpuProbe(0, f"no {NVIDIA_PROC_DIR}, and nvidia-smi -L listed no GPU{reason}")


_probe_lock = threading.Lock()
_probed: list[GpuProbe] = []


def nvidia_gpus() -> GpuProbe:
    """`probe_nvidia()` once per process: GPUs do not come and go during a run, and health is
    checked every half TTL (the lock keeps concurrent checks from running nvidia-smi twice)."""
    with _probe_lock:
        if not _probed:
            _probed.append(probe_nvidia())
        return _probed[0]


def forget_probe() -> None:
    """Probe again on the next call (tests, or after installing a driver in a long process)."""
    with _probe_lock:
        _probed.clear()
    torch_build.cache_clear()


@functools.cache
def torch_build() -> TorchBuild | None:
    """The installed torch's build, or None when torch is missing or its version.py unreadable
    (then nothing is claimed about the build)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        tree = ast.parse(path.read_text("utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    values: dict[str, object] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            values[target.id] = value.value
    if "cuda" not in values:
        return None

    def text(name: str) -> str | None:
        value = values.get(name)
        return value if isinstance(value, str) else None

    return TorchBuild(text("__version__"), text("cuda"), text("hip"))


def _visible(found: int) -> tuple[int, str]:
    """How many of the found GPUs CUDA will show torch, and a note when the environment hides
    some (CUDA reads CUDA_VISIBLE_DEVICES up to its first invalid, e.g. negative, entry)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is None:
        return found, ""
    listed = 0
    for entry in hidden.split(","):
        if not entry.strip() or entry.strip().startswith("-"):
            break
        listed += 1
    return min(found, listed), f" (CUDA_VISIBLE_DEVICES={hidden!r})"


def _cuda(index: int | None) -> tuple[bool, str]:
    """Would torch see a CUDA device (and this index)? The sentence names the fix if not."""
    build = torch_build()
    if build is not None and build.hip is not None:
        # A ROCm build answers to "cuda" too, with an AMD GPU behind it.
        if ROCM_DEVICE.exists():
            return True, f"ROCm torch and {ROCM_DEVICE}"
        return False, f"the installed torch is a ROCm build, but there is no {ROCM_DEVICE}"
    if build is not None and build.cuda is None:
        return False, (
            f"the installed torch ({build.version or 'unknown version'}) is a CPU-only build "
            "(install a CUDA build of torch to use the GPU)"
        )
    probe = nvidia_gpus()
    if probe.count == 0:
        return False, f"no NVIDIA GPU was found ({probe.source})"
    visible, note = _visible(probe.count)
    if visible == 0:
        return False, f"none of the {probe.count} NVIDIA GPU(s) found is visible{note}"
    if index is not None and index >= visible:
        return False, f"only {visible} NVIDIA GPU(s) visible{note}, so no index {index}"
    return True, f"{visible} NVIDIA GPU(s), found via {probe.source}{note}"


def _mps() -> tuple[bool, str]:
    machine = platform.machine()
    if sys.platform != "darwin" or machine != "arm64":
        return False, f"MPS needs a Mac with Apple silicon; this is {sys.platform} {machine}"
    release = platform.mac_ver()[0]
    parts = tuple(int(part) for part in release.split(".")[:2] if part.isdigit())
    if parts and parts < MPS_MIN_MACOS:
        least = ".".join(map(str, MPS_MIN_MACOS))
        return False, f"MPS needs macOS {least} or later; this is {release}"
    return True, f"Apple silicon, macOS {release}"


def check_device(requested: str) -> DeviceCheck:
    """The device the engine would pick for `requested`, as `engine.pick_device` picks it:
    `auto` is CUDA, then MPS, then the CPU (always fine); an explicit choice must be there."""
    match = _DEVICE.fullmatch(requested)
    if match is None:
        return DeviceCheck(False, requested, f"device must be {DEVICE_NAMES}, got {requested!r}")
    if requested == "cpu":
        return DeviceCheck(True, "cpu", "device cpu")
    if requested == "mps":
        ok, why = _mps()
        if ok:
            return DeviceCheck(True, "mps", f"device mps ({why})")
        return DeviceCheck(False, "mps", f"device mps asked for but {why}; {_FIX}")
    if requested.startswith("cuda"):
        index = match.group(1)
        ok, why = _cuda(None if index is None else int(index))
        if ok:
            return DeviceCheck(True, requested, f"device {requested} ({why})")
        return DeviceCheck(False, requested, f"device {requested} asked for but {why}; {_FIX}")
    cuda_ok, cuda_why = _cuda(None)
    if cuda_ok:
        return DeviceCheck(True, "cuda", f"device auto: cuda ({cuda_why})")
    mps_ok, mps_why = _mps()
    if mps_ok:
        return DeviceCheck(True, "mps", f"device auto: mps ({mps_why})")
    return DeviceCheck(True, "cpu", f"device auto: cpu, since {cuda_why}")


def check_dtype(requested: str) -> tuple[bool, str]:
    """A dtype name the engine accepts (`engine.pick_dtype`), checked without torch."""
    if requested in DTYPE_NAMES:
        return True, ""
    return False, f"dtype must be {', '.join(DTYPE_NAMES)}; got {requested!r}"
