"""The shared client's transport: sharded pools on asyncio streams (netbackend.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpcore
import httpx
import pytest

from csm_offload.netbackend import AsyncioBackend
from csm_offload.transport import ShardedTransport

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class _Server:
    """A minimal HTTP/1.1 server: counts connections and requests, answers "ok"."""

    def __init__(self, close_after: int | None = None, stall: bool = False) -> None:
        self.connections = 0
        self.requests = 0
        self.close_after = close_after
        self.stall = stall

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                if self.stall:
                    await asyncio.sleep(30)
                writer.write(_ANSWER)
                await writer.drain()
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def _serving(server: _Server, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), 5)


def test_every_shard_runs_on_the_asyncio_backend() -> None:
    # httpx has no backend argument: the transport replaces httpx's pool, a private attribute
    # that this test watches across httpx upgrades.
    transport = ShardedTransport(20)
    for shard in transport._shards:
        pool = shard._pool
        assert isinstance(pool, httpcore.AsyncConnectionPool)
        assert isinstance(pool._network_backend, AsyncioBackend)


async def test_connections_are_kept_alive_and_reused() -> None:
    server = _Server()
    async with _serving(server) as port, httpx.AsyncClient(transport=ShardedTransport(8)) as http:
        for _ in range(20):
            response = await http.get(f"http://127.0.0.1:{port}/")
            assert response.text == "ok"
    assert (server.requests, server.connections) == (20, 1)


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    server = _Server(close_after=1)
    async with _serving(server) as port, httpx.AsyncClient(transport=ShardedTransport(8)) as http:
        for _ in range(5):
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
            await asyncio.sleep(0.05)  # the close reaches the client before the next request
    assert (server.requests, server.connections) == (5, 5)


async def test_many_concurrent_requests_share_the_shards() -> None:
    server = _Server()
    async with (
        _serving(server) as port,
        httpx.AsyncClient(transport=ShardedTransport(64, shard_connections=8)) as http,
    ):
        answers = await asyncio.gather(
            *(http.get(f"http://127.0.0.1:{port}/{i}") for i in range(200))
        )
    assert all(a.text == "ok" for a in answers)
    assert server.connections <= 64


async def test_a_silent_server_is_httpx_read_timeout() -> None:
    server = _Server(stall=True)
    async with _serving(server) as port, httpx.AsyncClient(transport=ShardedTransport(8)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"http://127.0.0.1:{port}/", timeout=httpx.Timeout(5, read=0.2))


async def test_nothing_listening_is_httpx_connect_error() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with httpx.AsyncClient(transport=ShardedTransport(8)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


def _certificate(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_works_and_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    server = _Server()
    async with _serving(server, server_tls) as port:
        url = f"https://127.0.0.1:{port}/"
        async with httpx.AsyncClient(transport=ShardedTransport(8, verify=trusting)) as http:
            assert [(await http.get(url)).text for _ in range(3)] == ["ok"] * 3
        async with httpx.AsyncClient(transport=ShardedTransport(8)) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(url)
    assert server.requests == 3
