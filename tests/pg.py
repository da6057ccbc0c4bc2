"""A fresh PostgreSQL database per test (importable as the top-level module ``pg``).

``pg_url`` is a pytest fixture: ``CREATE DATABASE vfd_test_<random>`` on 127.0.0.1:5432 (user
postgres, trust auth, overridable with ``VFD_TEST_PG_ADMIN``), yields its ``postgresql://`` URL and
drops the database afterwards. With no server answering it skips the test, except under
``CI=true``, where it fails: CI must not report green for a backend it did not test.

    from pg import pg_url  # noqa: F401  (re-exported fixture)
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

ADMIN_URL = os.environ.get("VFD_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")

__all__ = ["ADMIN_URL", "fresh_database", "pg_url", "unavailable"]


def unavailable(reason: str) -> None:
    """Skip locally; fail under CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _connect(url: str) -> Any:
    try:
        import psycopg2
    except ImportError:
        unavailable("psycopg2 is not installed")
    conn = psycopg2.connect(url, connect_timeout=3)
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def fresh_database(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """Create an empty database on ``admin_url``'s server; yield its URL; drop it."""
    import psycopg2
    try:
        admin = _connect(admin_url)
    except psycopg2.Error as exc:
        unavailable(f"no PostgreSQL server answers at {admin_url}: {str(exc).strip()}")
    name = f"vfd_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        parts = urlsplit(admin_url)
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    finally:
        with contextlib.suppress(Exception), admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url
