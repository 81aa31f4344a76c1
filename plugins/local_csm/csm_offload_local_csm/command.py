"""`csm-offload serve`: the worker HTTP server on this machine's GPU (or CPU)."""

from __future__ import annotations

import click

from csm_offload.secret import Secret
from csm_offload.wire import WireLimits

from .server import serve
from .settings import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SERVER_LIMITS,
    ServerSettings,
    check_settings,
)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--token",
    envvar="CSM_OFFLOAD_WORKER_TOKEN",
    help="Bearer token clients must send (required unless bound to loopback). "
    "Prefer the CSM_OFFLOAD_WORKER_TOKEN environment variable: arguments show in `ps`.",
)
@click.option("--model", default="sesame/csm-1b", show_default=True, envvar="CSM_OFFLOAD_MODEL")
@click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N, mps, cpu")
@click.option("--dtype", default="auto", show_default=True, help="auto, bfloat16, float16, float32")
@click.option("--static-cache", is_flag=True, help="Static KV cache (pairs with --compile).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (GPU).")
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(1))
@click.option("--result-ttl", default=600.0, show_default=True, help="Seconds results are kept.")
@click.option("--max-batch", default=DEFAULT_SERVER_LIMITS.max_requests, show_default=True)
@click.option("--max-text-chars", default=DEFAULT_SERVER_LIMITS.max_text_chars, show_default=True)
@click.option(
    "--max-body-mb", default=DEFAULT_SERVER_LIMITS.max_body_bytes // 2**20, show_default=True
)
@click.option(
    "--max-connections",
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    type=click.IntRange(1),
    help="Open connections; over it, the one that has waited longest for a request is dropped.",
)
@click.option(
    "--header-timeout",
    default=DEFAULT_HEADER_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a client has to send a request's line and headers, from when it connects "
    "or from the first byte of a request on a kept-alive connection; slower answers 408.",
)
@click.option(
    "--keep-alive",
    default=DEFAULT_KEEP_ALIVE_S,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds an idle connection stays open for its client's next request.",
)
@click.option(
    "--body-timeout",
    default=DEFAULT_BODY_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a client has to send a body, plus 4 s per MiB (at least 256 KiB/s); "
    "slower answers 408.",
)
def serve_command(
    host: str,
    port: int,
    token: str | None,
    model: str,
    device: str,
    dtype: str,
    static_cache: bool,
    compile_: bool,
    max_queue: int,
    result_ttl: float,
    max_batch: int,
    max_text_chars: int,
    max_body_mb: int,
    max_connections: int,
    header_timeout: float,
    keep_alive: float,
    body_timeout: float,
) -> None:
    """Serve CSM over HTTP (POST /v1/jobs, GET /v1/jobs/{id}, GET /healthz)."""
    limits = WireLimits(
        max_body_bytes=max_body_mb * 2**20,
        max_requests=max_batch,
        max_text_chars=max_text_chars,
    )
    settings = ServerSettings(
        host=host,
        port=port,
        token=Secret(token) if token else None,
        max_queue=max_queue,
        result_ttl_s=result_ttl,
        limits=limits,
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        keep_alive_s=keep_alive,
        body_timeout_s=body_timeout,
    )
    check_settings(settings)  # before the model loads: a refused start should be instant

    def load() -> object:
        from .engine import CsmEngine, EngineOptions

        options = EngineOptions(model, device, dtype, static_cache, compile_)
        return CsmEngine.load(options)

    serve(load, settings)
