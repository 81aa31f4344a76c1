"""Fixtures shared by the whole suite."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from csm_offload.plugins import Plugins


@pytest.fixture
def plugins() -> Plugins:
    """A plugin manager with no entry points loaded: tests register throwaway plugins on it."""
    return Plugins()


@contextlib.contextmanager
def registered(plugins: Plugins, plugin: Any, name: str) -> Iterator[bool]:
    """Register a throwaway plugin for the duration of a `with` block, and always unregister."""
    ok = plugins.register(plugin, name)
    try:
        yield ok
    finally:
        plugins.unregister(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One real PostgreSQL server on 127.0.0.1 for the session (tests/postgres.py)."""
    from tests.postgres import running

    with running() as server:
        yield server


@pytest.fixture
def pg_dsn(postgres_server: Any) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return str(postgres_server.create_database())
