"""Two console processes on one database, as behind a load balancer: a one-time flash carrying a
new secret is shown once across both, whichever replica serves the page first."""

from __future__ import annotations

import re
import secrets

import httpx

from console.context import CSRF_FIELD
from tests.console.conftest import console_env, running_console
from tests.console.test_dashboard import TOKEN_IN_PAGE, csrf_token

SECRET_IN_PAGE = re.compile(r'id="new-endpoint-value">(whsec_[A-Za-z0-9+/=]+)<')


def test_a_flash_shown_by_one_replica_is_not_shown_by_the_other(database_url: str) -> None:
    env = console_env(DATABASE_URL=database_url, CONSOLE_JWT_SECRET=secrets.token_urlsafe(32))
    with (
        running_console(env) as first,
        running_console(env) as second,
        httpx.Client(base_url=first.base) as a,
    ):
        page = a.get("/signin")
        signed = a.post(
            "/signin",
            data={
                "email": "ada@example.com",
                "password": "correct horse",
                CSRF_FIELD: csrf_token(page),
            },
        )
        assert signed.status_code == 303
        token = csrf_token(a.get("/projects"))
        created = a.post("/projects", data={"name": "lab", "environment": "dev", CSRF_FIELD: token})
        project = created.headers["location"]

        # A new key: its flash cookie, shown by the first replica, then replayed to the other
        # (a retry, a second tab, a load balancer switching replicas) with the same cookies.
        assert a.post(f"{project}/keys", data={"kind": "sk", CSRF_FIELD: token}).status_code == 303
        cookies = dict(a.cookies)
        shown = TOKEN_IN_PAGE.search(a.get(project).text)
        assert shown is not None
        replayed = httpx.get(f"{second.base}{project}", cookies=cookies)
        assert replayed.status_code == 200
        assert 'class="badge badge-dev"' in replayed.text  # the page, signed in, without it
        assert TOKEN_IN_PAGE.search(replayed.text) is None
        assert shown[1] not in replayed.text

        # The other way round, with a signing secret: the second replica opens the first one's
        # flash (they share the key), and then the first one no longer does.
        posted = a.post(
            f"{project}/webhooks",
            data={"url": "https://hooks.example.com:10443/in", CSRF_FIELD: token},
        )
        assert posted.status_code == 303
        cookies = dict(a.cookies)
        there = SECRET_IN_PAGE.search(httpx.get(f"{second.base}{project}", cookies=cookies).text)
        assert there is not None
        here = a.get(project)
        assert here.status_code == 200
        assert SECRET_IN_PAGE.search(here.text) is None
        assert there[1] not in here.text
