"""The worker's listening socket: bound before the model loads, with descriptors to spare.

`serve` binds the port first, before minutes of model loading, so that a port that is busy,
privileged or not this machine's is one sentence at once (exit 2), and raises the process's
file-descriptor limit so that `max_connections` sockets fit under it.
"""

from __future__ import annotations

import errno
import os
import socket

from csm_offload import UserError

from .settings import ServerSettings

#: Descriptors beyond the connections: the listener, the weights, logs, torch's own.
_SPARE_FDS = 64


def open_listener(settings: ServerSettings, backlog: int = 2048) -> socket.socket:
    """Bind and listen now, before minutes of model loading: a busy port is one sentence at
    once, and nothing can take the port while the weights load (clients that connect then
    wait in the backlog and are answered once the model is up)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":  # a restart may reuse a port in TIME_WAIT; on Windows it would steal
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise UserError(_bind_error(settings.host, settings.port, exc)) from None
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use: choose another with --port"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs root: choose one above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"{host} is not an address of this machine: choose another with --host"
    reason = exc.strerror or exc
    return f"cannot listen on port {port} of {host} ({reason}): check --host and --port"


def raise_fd_limit(max_connections: int) -> None:
    """Make sure `max_connections` sockets fit under the process's file-descriptor limit."""
    try:
        import resource
    except ImportError:  # Windows has no such per-process limit to raise
        return
    needed = max_connections + _SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UserError(
            f"--max-connections {max_connections} needs {needed} open files but this process may "
            f"open only {hard}: lower --max-connections or raise the limit (ulimit -n)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
