"""What `modal deploy` builds: the pinned requirements of the two images and the deploy settings.

No `modal` import here, so the pins and the settings are checked by plain tests. The pins are
the versions the test suite runs with (tests check that they agree with the environment).

Deploy settings are read from the environment of the shell that runs `modal deploy` and baked
into the images' environment, so that the containers, which import `app.py` again, see the same
values (a container does not inherit the deploying shell's environment).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from csm_offload import UserError

#: torch's CUDA 12.8 wheels (Modal's GPU hosts have drivers for them), from PyTorch's index.
TORCH_INDEX_URL = "https://download.pytorch.org/whl/cu128"
TORCH = ("torch==2.11.0", "torchaudio==2.11.0")
#: The core's dependencies and the endpoint's web framework: all the web container needs.
WEB_PINS = (
    "attrs==26.1.0",
    "cattrs==26.2.1",
    "click==8.5.1",
    "fastapi==0.165.0",
    "httpx==0.28.1",
    "numpy==2.4.6",
    "pluggy==1.7.0",
    "pydantic==2.14.3",
    "python-dotenv==1.2.4",
    "PyYAML==6.0.3",
    "rich==15.0.0",
    "sniffio==1.3.1",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "starlette==1.10.0",
)
#: The engine's, on top of `WEB_PINS` and `TORCH`, for the GPU container.
ENGINE_PINS = (
    "huggingface_hub==2.4.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "transformers==5.23.0",
)
#: Our packages, added to both images from this machine's installation.
SOURCES = ("csm_offload", "csm_offload_local_csm", "csm_offload_modal")
#: Where the Volume is mounted in the GPU container; the Hugging Face cache lives on it.
CACHE_DIR = "/cache"

_PREFIX = "CSM_OFFLOAD_MODAL_"
#: The engine's own settings (see `worker.WorkerConfig`), passed on to the containers when set.
ENGINE_ENV = (
    "CSM_OFFLOAD_DEVICE",
    "CSM_OFFLOAD_DTYPE",
    "CSM_OFFLOAD_STATIC_CACHE",
    "CSM_OFFLOAD_COMPILE",
    "CSM_OFFLOAD_MAX_BATCH",
    "CSM_OFFLOAD_MAX_TEXT_CHARS",
)


def _number(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(_PREFIX + name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{_PREFIX}{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise UserError(f"{_PREFIX}{name} must be 0 or more, got {value}")
    return value


@attrs.frozen
class DeployConfig:
    """The app's deploy-time choices; see docs/modal.md for each."""

    app_name: str = "csm-offload"
    #: A Modal GPU type (`T4`, `L4`, `L40S`, `A100-80GB`, `H100`, …).
    gpu: str = "A100-80GB"
    #: Seconds an idle GPU container is kept (and billed) after its last call.
    scaledown_window_s: int = 60
    #: Seconds one batch may run before Modal fails the call (`timeout`).
    timeout_s: int = 600
    #: Seconds a new container may take to start, weights download on first use included.
    startup_timeout_s: int = 1200
    #: Most GPU containers at once: a ceiling on spend per second.
    max_containers: int = 10
    #: The Volume that caches the weights across cold starts (created if missing).
    volume: str = "csm-offload-cache"
    #: The Modal Secret that holds HF_TOKEN; "" when the weights are on the Volume already.
    hf_secret: str = "huggingface"
    #: A Hugging Face id, or a directory on the Volume (under /cache).
    model: str = "sesame/csm-1b"
    #: `ENGINE_ENV` values set in the deploying shell, as (name, value) pairs.
    engine_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DeployConfig:
        base = cls()
        return cls(
            app_name=env.get(_PREFIX + "APP") or base.app_name,
            gpu=env.get(_PREFIX + "GPU") or base.gpu,
            scaledown_window_s=_number(env, "SCALEDOWN_S", base.scaledown_window_s),
            timeout_s=_number(env, "TIMEOUT_S", base.timeout_s),
            startup_timeout_s=_number(env, "STARTUP_TIMEOUT_S", base.startup_timeout_s),
            max_containers=_number(env, "MAX_CONTAINERS", base.max_containers),
            volume=env.get(_PREFIX + "VOLUME") or base.volume,
            hf_secret=env.get(_PREFIX + "HF_SECRET", base.hf_secret),
            model=env.get("CSM_OFFLOAD_MODEL") or base.model,
            engine_env=tuple((name, env[name]) for name in ENGINE_ENV if env.get(name)),
        )

    def environment(self) -> dict[str, str]:
        """The images' environment: these settings again (for the containers) and the cache."""
        return {
            _PREFIX + "APP": self.app_name,
            _PREFIX + "GPU": self.gpu,
            _PREFIX + "SCALEDOWN_S": str(self.scaledown_window_s),
            _PREFIX + "TIMEOUT_S": str(self.timeout_s),
            _PREFIX + "STARTUP_TIMEOUT_S": str(self.startup_timeout_s),
            _PREFIX + "MAX_CONTAINERS": str(self.max_containers),
            _PREFIX + "VOLUME": self.volume,
            _PREFIX + "HF_SECRET": self.hf_secret,
            "CSM_OFFLOAD_MODEL": self.model,
            "HF_HOME": f"{CACHE_DIR}/huggingface",
            **dict(self.engine_env),
        }
