"""A real PostgreSQL server for the store tests: the binaries of the `pgserver` wheel (test
extra), listening only on a Unix socket in a temporary folder (no network). A test module
starts one in a module-scoped fixture and makes a fresh database per test:

    @pytest.fixture(scope="module")
    def pg_server(tmp_path_factory): with running_server(tmp_path_factory) as uri: yield uri

As root, pgserver runs the server as a `pgserver` system user it creates (PostgreSQL
refuses to run as root) and opens the folders above its data directory to it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

__all__ = ["database_uri", "new_database", "running_server"]


@contextmanager
def running_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A started server, by its admin URI (`postgresql://postgres:@/postgres?host=<dir>`);
    stopped and deleted on exit."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def database_uri(admin_uri: str, name: str) -> str:
    """`admin_uri` naming database `name` instead."""
    return urlsplit(admin_uri)._replace(path=f"/{name}").geturl()


def new_database(admin_uri: str) -> str:
    """The URI of a new, empty database on the server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_uri, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_uri(admin_uri, name)
