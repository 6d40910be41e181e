"""Schema lint for `make check`: migrate a throwaway database and run `supabase db lint` on it.

plpgsql_check (Debian: postgresql-15-plpgsql-check) must be installable on the server; without it
the lint is reported as not run rather than failing the whole check.
"""

from __future__ import annotations

import os

import psycopg

from ops import database


def main() -> int:
    admin_url = os.environ.get("TEST_DATABASE_URL", database.LOCAL_SERVER_URL)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        available = conn.execute(
            "select 1 from pg_available_extensions where name = 'plpgsql_check'"
        ).fetchone()
    if available is None:
        print("schema lint not run: plpgsql_check is not available on the server")
        return 0
    with database.scratch_database(admin_url, "parity_lint") as url:
        print(
            database.run_cli(
                [
                    "db",
                    "lint",
                    "--db-url",
                    database.cli_url(url),
                    "--level",
                    "warning",
                    "--fail-on",
                    "warning",
                    "--schema",
                    "public,private",
                ]
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
