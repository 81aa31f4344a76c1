"""A real PostgreSQL server for the tests: the binaries of the `pgserver` wheel (PyPI, in
tests/requirements.txt), one throwaway cluster on 127.0.0.1, a fresh database per test.

PostgreSQL refuses to run as root, and CI runs as root: the cluster then belongs to `nobody`
(and runs a world-readable copy of the binaries when the checkout is in a private folder).
Unix sockets are off (`-k ''`): every client connects over TCP on loopback, as a client on
another machine would.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg


def _bin_dir() -> Path:
    """The wheel's binaries first; a system install (Debian's postgresql) otherwise."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "postgres").is_file():
            return bundled
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "postgres").is_file():
            return candidate
    raise RuntimeError("no PostgreSQL binaries: pip install -r tests/requirements.txt")


def _reachable_by(user: str | None, bin_dir: Path) -> Path:
    """`bin_dir`, or a copy that `user` can run. A checkout may sit below a folder only root
    may enter (`mktemp -d` makes 0700 folders); the cluster's owner must still run the
    binaries, so the wheel's files (its `pginstall` and, beside the package, the libraries
    its programs find by a relative rpath) are copied once into a world-readable folder."""
    if user is None or _world_traversable(bin_dir):
        return bin_dir
    package = bin_dir.parents[1]  # .../pgserver
    copy = Path(tempfile.gettempdir()) / f"csm-pg-bin-{os.getpid()}"
    if not (copy / "pgserver" / "pginstall" / "bin" / "postgres").is_file():
        atexit.register(shutil.rmtree, copy, True)
        shutil.copytree(package / "pginstall", copy / "pgserver" / "pginstall", dirs_exist_ok=True)
        libs = package.parent / "pgserver.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy / "pgserver.libs", dirs_exist_ok=True)
        for folder in (copy, *copy.rglob("*")):
            if folder.is_dir():
                folder.chmod(0o755)
    return copy / "pgserver" / "pginstall" / "bin"


def _world_traversable(path: Path) -> bool:
    """Whether every folder from the root down to `path` lets others in (o+x)."""
    return all(folder.stat().st_mode & 0o001 for folder in (path, *path.parents))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One cluster in a temporary folder; `stop` removes it."""

    def __init__(self, **settings: str) -> None:
        self._user = "nobody" if os.geteuid() == 0 else None
        self.bin = _reachable_by(self._user, _bin_dir())
        self.root = Path(tempfile.mkdtemp(prefix="csm-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.settings = {"fsync": "off", "max_connections": "200", **settings}
        self._process: subprocess.Popen[bytes] | None = None

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, user=self._user, timeout=60)

    def start(self) -> PostgresServer:
        # The cluster's owner must reach its folder: mkdtemp makes it 0700 for us.
        self.root.chmod(0o755)
        self.data.mkdir()
        if self._user is not None:
            shutil.chown(self.data, self._user)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust")
        options = [f"-c{key}={value}" for key, value in self.settings.items()]
        command = [str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1"]
        log = (self.root / "server.log").open("wb")
        self._process = subprocess.Popen(
            [*command, "-p", str(self.port), "-k", "", *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self._user,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                assert self._process is not None
                if self._process.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"PostgreSQL did not start:\n{log[-2000:]}") from None
                time.sleep(0.05)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its DSN."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM's "smart" one waits for every
            # client to leave, and tests stop servers under clients on purpose.
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(**settings: str) -> Iterator[PostgresServer]:
    server = PostgresServer(**settings).start()
    try:
        yield server
    finally:
        server.stop()
