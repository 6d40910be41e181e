"""What the xdist workers of one run share: the template database, migrated once for the whole run.

The first worker that needs it creates and migrates it (with the real Supabase CLI) under a file
lock; the others wait on the lock and copy the same one. The controller drops it when the run ends.
The run's folder under the system's temporary directory is named after xdist's test run id, which
the controller fixes before it starts the workers. A plugin, loaded by tests/conftest.py; a run
without xdist migrates a template of its own instead (`scratch_database`)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from filelock import FileLock

from ops import database

RECORD = "template.json"


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def is_controller(config: pytest.Config) -> bool:
    """Whether this process hands tests out to xdist workers (and runs none itself); known from
    the options as early as `pytest_configure`."""
    return (
        not is_worker(config)
        and config.getoption("dist", "no") != "no"
        and bool(config.getoption("tx", None))
    )


def run_id(config: pytest.Config) -> str | None:
    """xdist's id of this test run, seen alike by its controller and workers; None without xdist."""
    if is_worker(config):
        return str(config.workerinput["testrunuid"])  # type: ignore[attr-defined]
    if is_controller(config):
        return str(config.getoption("testrunuid"))
    return None


def run_folder(run: str) -> Path:
    return Path(tempfile.gettempdir()) / f"parity-tests-{run}"


def pytest_configure(config: pytest.Config) -> None:
    # The controller names the run before its workers start, so that it knows the run's folder.
    if is_controller(config) and config.getoption("testrunuid") is None:
        config.option.testrunuid = uuid.uuid4().hex


@contextlib.contextmanager
def template_database(config: pytest.Config, admin_url: str) -> Iterator[str]:
    """The name of a migrated template database: this run's shared one under xdist, else one of
    this process's own, dropped afterwards."""
    run = run_id(config)
    if run is None:
        with database.scratch_database(admin_url, "parity_template") as url:
            yield urlsplit(url).path.lstrip("/")
        return
    folder = run_folder(run)
    folder.mkdir(exist_ok=True)
    record = folder / RECORD
    with FileLock(folder / "template.lock"):
        state = json.loads(record.read_text()) if record.exists() else {"created": []}
        if state.get("ready") is None:
            name = database.unique_name("parity_template")
            # Recorded before it exists, so that the controller drops it whatever happens next.
            state.update(admin_url=admin_url, created=[*state["created"], name])
            record.write_text(json.dumps(state))
            database.prepare(database.create_database(admin_url, name))
            state["ready"] = name
            record.write_text(json.dumps(state))
    yield str(state["ready"])


@pytest.fixture(scope="session")
def template_db(request: pytest.FixtureRequest, admin_url: str) -> Iterator[str]:
    """Migrated once per run with the real Supabase CLI (once for all xdist workers)."""
    with template_database(request.config, admin_url) as name:
        yield name


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Controller: drop the run's template databases and remove its folder."""
    config = session.config
    if not is_controller(config) or (run := run_id(config)) is None:
        return
    folder = run_folder(run)
    record = folder / RECORD
    if record.exists():
        state = json.loads(record.read_text())
        for name in state["created"]:
            database.drop_database(state["admin_url"], name)
    shutil.rmtree(folder, ignore_errors=True)
