"""The csm-offload worker as a Modal app: `modal deploy -m csm_offload_modal.app`.

- `CsmWorker`: a GPU class that loads CSM once per container (`@modal.enter`) and turns one
  wire batch into the endpoint's COMPLETED body (`@modal.method generate`). The weights come
  from the Hugging Face Hub with `HF_TOKEN` from a Modal Secret, into a cache on a Modal Volume
  that later cold starts read instead of downloading again (or from a directory on the Volume).
- `web`: the job-queue endpoint (`web.create_web_app`) behind Modal's proxy auth, which spawns
  `generate` and polls it with `FunctionCall.get(timeout=0)`.

Importing this module contacts nothing: Modal objects are resolved when `modal deploy` runs.
Deploy settings (GPU, scaledown window, …) come from `CSM_OFFLOAD_MODAL_*` in the deploying
shell (see `deploy.DeployConfig` and docs/modal.md).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import modal

from csm_offload_modal.deploy import (
    CACHE_DIR,
    ENGINE_PINS,
    SOURCES,
    TORCH,
    TORCH_INDEX_URL,
    WEB_PINS,
    DeployConfig,
)
from csm_offload_modal.worker import WorkerConfig

if TYPE_CHECKING:  # the web container imports these; the deploying shell need not
    from fastapi import FastAPI

    from csm_offload_modal.web import QueueStats

# Read (and checked) here, so a bad setting fails `modal deploy` with its name, not a container.
CONFIG = DeployConfig.from_env(os.environ)
WORKER = WorkerConfig.from_env(os.environ)

web_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*WEB_PINS)
    .env(CONFIG.environment())
    .add_local_python_source(*SOURCES)
)
gpu_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*TORCH, index_url=TORCH_INDEX_URL)
    .pip_install(*WEB_PINS, *ENGINE_PINS)
    .env(CONFIG.environment())
    .add_local_python_source(*SOURCES)
)
cache = modal.Volume.from_name(CONFIG.volume, create_if_missing=True)
secrets = (
    [modal.Secret.from_name(CONFIG.hf_secret, required_keys=["HF_TOKEN"])]
    if CONFIG.hf_secret
    else []
)

app = modal.App(CONFIG.app_name)


@app.cls(
    image=gpu_image,
    gpu=CONFIG.gpu,
    volumes={CACHE_DIR: cache},
    secrets=secrets,
    scaledown_window=CONFIG.scaledown_window_s,
    timeout=CONFIG.timeout_s,
    startup_timeout=CONFIG.startup_timeout_s,
    max_containers=CONFIG.max_containers,
)
class CsmWorker:
    """One GPU container: the engine, loaded once, and its batches."""

    @modal.enter()
    def load(self) -> None:
        from csm_offload_modal.worker import GpuWorker

        self.worker = GpuWorker.load(WORKER)
        # A first start downloaded the weights into the Volume's cache: keep them for the
        # next cold start (a no-op when nothing changed).
        cache.commit()

    @modal.method()
    def generate(self, batch: bytes) -> bytes:
        return self.worker.run(batch)


class ModalCalls:
    """The web endpoint's `Calls`, on the deployed `CsmWorker.generate`."""

    async def spawn(self, batch: bytes) -> str:
        call = await CsmWorker().generate.spawn.aio(batch)
        return call.object_id

    async def result(self, call_id: str) -> bytes:
        return await modal.FunctionCall.from_id(call_id).get.aio(timeout=0)

    async def cancel(self, call_id: str) -> None:
        await modal.FunctionCall.from_id(call_id).cancel.aio()

    async def stats(self) -> QueueStats:
        from csm_offload_modal.web import QueueStats

        found = await CsmWorker().generate.get_current_stats.aio()
        return QueueStats(backlog=found.backlog, containers=found.num_total_runners)


@app.function(image=web_image)
@modal.concurrent(max_inputs=100)
@modal.asgi_app(requires_proxy_auth=True)
def web() -> FastAPI:
    from csm_offload_modal.web import AppInfo, create_web_app

    info = AppInfo(CONFIG.app_name, CONFIG.gpu, CONFIG.model, WORKER.limits)
    return create_web_app(ModalCalls(), info)
