"""Test databases: a server to run on, a template migrated once per session by the real Supabase
CLI, and a fresh database per test cloned from it (`CREATE DATABASE ... TEMPLATE`)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from ops import database

LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    """`TEST_DATABASE_URL`, else the machine's local server, else the embedded one."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        return explicit
    try:
        with psycopg.connect(LOCAL_SERVER_URL, connect_timeout=2):
            return LOCAL_SERVER_URL
    except psycopg.OperationalError:
        return database.start_embedded(database.DATA_DIR / "test-postgres")


def unique_name(prefix: str) -> str:
    """A database name no concurrent test run will pick."""
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if template is None:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        else:
            conn.execute(
                sql.SQL("create database {} template {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    return database.with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


@contextmanager
def migrated_template(admin_url: str) -> Iterator[str]:
    """A database bootstrapped and migrated by `supabase db push`; yields its name."""
    name = unique_name("parity_template")
    url = create_database(admin_url, name)
    try:
        database.prepare(url)
        yield name
    finally:
        drop_database(admin_url, name)
