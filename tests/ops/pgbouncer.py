"""A throwaway PgBouncer in transaction mode in front of the test server: its own port, config and
directory, started and stopped by the test that asks for it (as Supabase's pooler on 6543 is)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@dataclass(frozen=True)
class Pooler:
    port: int
    directory: Path

    def url(self, database_url: str) -> str:
        """`database_url` (a database on the test server) reached through this pooler."""
        parts = urlsplit(database_url)
        query = {k: v for k, v in parse_qsl(parts.query) if k != "host"}
        user = parts.username or "postgres"
        return urlunsplit(
            (
                parts.scheme,
                f"{user}@127.0.0.1:{self.port}",
                parts.path,
                urlencode(query),
                "",
            )
        )

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text() if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def pgbouncer(admin_url: str, *, pool_size: int = 1) -> Iterator[Pooler]:
    """PgBouncer in transaction mode with `pool_size` server connections per database and user."""
    if not os.path.exists(PGBOUNCER):
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    server = conninfo_to_dict(admin_url)
    host = str(server.get("host") or "127.0.0.1")
    server_port = str(server.get("port") or "5432")
    directory = Path(tempfile.mkdtemp(prefix="parity-pgbouncer-"))
    port = _free_port()
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={host} port={server_port}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "min_pool_size = 0\n"
        "reserve_pool_size = 0\n"
        "max_client_conn = 500\n"
        "max_db_connections = 0\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        f"pidfile = {directory / 'pgbouncer.pid'}\n"
    )
    command = [PGBOUNCER, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: run it as the postgres user
        owner = pwd.getpwnam("postgres")
        for path in [directory, *directory.iterdir()]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pooler = Pooler(port, directory)
    try:
        deadline = time.monotonic() + 20
        probe = pooler.url(admin_url)
        while True:
            try:
                with psycopg.connect(probe, connect_timeout=2) as conn:
                    conn.execute("select 1")
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    raise AssertionError(
                        f"pgbouncer did not start: {output}\n{pooler.log()}"
                    ) from None
                time.sleep(0.1)
        yield pooler
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(directory, ignore_errors=True)
