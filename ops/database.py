"""Provisioning: an embedded Postgres when nothing is configured, the local Supabase bootstrap,
and migrations applied by the real Supabase CLI."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parent.parent
SUPABASE_DIR = REPO_ROOT / "supabase"
BOOTSTRAP_SQL = SUPABASE_DIR / "bootstrap" / "local_supabase.sql"
DATA_DIR = REPO_ROOT / ".data"
LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class ProvisioningError(RuntimeError):
    """A database could not be prepared."""


def supabase_cli() -> Path:
    """The Supabase CLI pinned by package.json (installed by `npm ci`)."""
    cli = REPO_ROOT / "node_modules" / ".bin" / "supabase"
    if not cli.exists():
        raise ProvisioningError(f"Supabase CLI not installed at {cli}: run `npm ci` (or `make`).")
    return cli


def cli_url(url: str) -> str:
    """`url` in the form the Supabase CLI accepts: a host is always present (a Unix socket
    directory goes in the `host` query parameter) and TLS is off for local servers."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("sslmode", "disable")
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, hostport = netloc.rpartition("@")
        if not hostport:
            netloc = f"{credentials}@localhost:5432"
    elif not netloc:
        netloc = "localhost:5432"
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="/"), ""))


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, ""))


def bootstrap(url: str) -> None:
    """Recreate the Supabase subset our migrations rely on. Local and test databases only."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BOOTSTRAP_SQL.read_text().encode())


_PROMPT_LINES: Final = {
    # `--yes` answers the CLI's confirmation itself: the question and its answer are noise here.
    "Do you want to push these migrations to the remote database?": "Migrations to apply:",
    "[Y/n] y": None,
}


def run_cli(args: list[str], workdir: Path = REPO_ROOT, *, timeout: float | None = 300) -> str:
    """Run the pinned Supabase CLI; its output in the order it was written (stdout and stderr
    share one pipe), without the confirmation prompt `--yes` answered."""
    result = subprocess.run(
        [str(supabase_cli()), *args, "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "DO_NOT_TRACK": "1", "SUPABASE_TELEMETRY_DISABLED": "1"},
    )
    lines = []
    for line in result.stdout.strip().splitlines():
        replacement = _PROMPT_LINES.get(line.strip(), line)
        if replacement is not None:
            lines.append(replacement)
    output = "\n".join(lines)
    if result.returncode != 0:
        raise ProvisioningError(f"supabase {' '.join(args[:2])} failed:\n{output}")
    return output


SUPABASE_ROLES: Final = ("anon", "authenticated", "service_role")


def missing_supabase_parts(url: str) -> list[str]:
    """What of Supabase's roles and `auth` schema (which the migrations rely on) `url` lacks."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        roles = {
            row[0]
            for row in conn.execute(
                "select rolname from pg_roles where rolname = any(%s)", (list(SUPABASE_ROLES),)
            )
        }
        row = conn.execute("select to_regnamespace('auth') is not null").fetchone()
    missing = [f"role {role}" for role in SUPABASE_ROLES if role not in roles]
    if not (row and row[0]):
        missing.append("schema auth")
    return missing


def require_supabase_parts(url: str) -> None:
    """Refuse, with what to do, a database without Supabase's roles and `auth` schema."""
    missing = missing_supabase_parts(url)
    if missing:
        raise ProvisioningError(
            f"this database lacks what every Supabase project has ({', '.join(missing)}), which"
            " the migrations rely on. On a local or test Postgres server, create them once with"
            " `parity migrate --bootstrap --url <DATABASE_URL>` (never on a Supabase project:"
            " it has them already)."
        )


LOCK_RETRIES_TOTAL: Final = "parity.lock_retries_total"
"""Setting read by `private.with_lock_retries` (migration 20260201000000_environments)."""


def push_migrations(
    url: str, *, workdir: Path = REPO_ROOT, lock_retries_total: str | None = None
) -> str:
    """`supabase db push`: apply the migrations in `workdir/supabase/migrations` not yet applied.

    `lock_retries_total` (an interval: `30s`, `20min`) sets how long each migration keeps trying
    to take its locks before it gives up (the setting `parity.lock_retries_total`, for this push
    only; 5 minutes when unset). No time limit of its own: every migration's waits are bounded."""
    if lock_retries_total is not None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        # Backslash-escaped: spaces separate the options' arguments.
        value = lock_retries_total.strip().replace("\\", "\\\\").replace(" ", "\\ ")
        query["options"] = f"{query.get('options', '')} -c {LOCK_RETRIES_TOTAL}={value}".strip()
        url = urlunsplit((*parts[:3], urlencode(query), parts.fragment))
    return run_cli(["db", "push", "--db-url", cli_url(url), "--yes"], workdir, timeout=None)


def list_migrations(url: str, *, workdir: Path = REPO_ROOT) -> str:
    """`supabase migration list`: local migrations beside those the database has applied."""
    return run_cli(["migration", "list", "--db-url", cli_url(url)], workdir)


def applied_migrations(url: str) -> list[str]:
    """Versions recorded by the CLI in the database, oldest first."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "select version from supabase_migrations.schema_migrations order by version"
        ).fetchall()
    return [row[0] for row in rows]


@contextlib.contextmanager
def _quiet_platformdirs() -> Iterator[None]:
    # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back
    # to /tmp, which is fine here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def start_embedded(data_dir: Path = DATA_DIR / "postgres") -> str:
    """Start (or reuse) the embedded Postgres under `data_dir`; return its URL.

    pgserver listens on a Unix socket only; the URL names it in the `host` query parameter.
    The server keeps running until :func:`stop_embedded`.
    """
    with _quiet_platformdirs():
        import pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(data_dir, cleanup_mode=None)  # type: ignore[attr-defined]
    socket_dir = urlsplit(server.get_uri()).query.removeprefix("host=")
    return f"postgresql://postgres@localhost:5432/postgres?host={socket_dir}"


def stop_embedded(data_dir: Path = DATA_DIR / "postgres") -> None:
    """Stop the embedded Postgres under `data_dir` (fast shutdown), if it runs."""
    if not (data_dir / "postmaster.pid").exists():
        return
    with _quiet_platformdirs():
        import pgserver

    # Postgres refuses to run as root; pgserver then runs it as its own system user.
    user = "pgserver" if os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.CalledProcessError):
        pgserver.pg_ctl(  # type: ignore[attr-defined]
            ["-m", "fast", "-w", "stop"], pgdata=data_dir, user=user
        )


def prepare(url: str) -> str:
    """Bootstrap `url` and push the migrations; return the CLI's account of what it applied."""
    bootstrap(url)
    return push_migrations(url)


def server_url(explicit: str | None, embedded_dir: Path) -> str:
    """A server to create scratch databases on: `explicit` when given, else the machine's local
    server when it answers, else an embedded one under `embedded_dir`."""
    if explicit:
        return explicit
    try:
        with psycopg.connect(LOCAL_SERVER_URL, connect_timeout=2):
            return LOCAL_SERVER_URL
    except psycopg.OperationalError:
        return start_embedded(embedded_dir)


def unique_name(prefix: str) -> str:
    """A database name no concurrent run will pick."""
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create database `name` (a copy of `template` when given); return its URL."""
    statement = sql.SQL("create database {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" template {}").format(sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)
    return with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def scratch_database(admin_url: str, prefix: str, *, template: str | None = None) -> Iterator[str]:
    """A database of its own, dropped afterwards: a copy of `template`, or else bootstrapped and
    migrated by the Supabase CLI. Yields its URL."""
    name = unique_name(prefix)
    url = create_database(admin_url, name, template=template)
    try:
        if template is None:
            prepare(url)
        yield url
    finally:
        drop_database(admin_url, name)
