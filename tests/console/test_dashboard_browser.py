"""The dashboard in a real Chromium (Playwright, headless) against the console on loopback and a
real Postgres: nothing repeats on reload, a secret shows once, the delivery log updates by itself
(a real worker process delivering to a real receiver), the layout holds at 1,280 and 390 px with
long names and URLs (checked by element geometry), danger looks and asks, the environment can
change (or says why not, in the database's words), usage matches the counters. Screenshots go to
test-artifacts/console/."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect
from standardwebhooks import Webhook

from tests.console.conftest import json_server
from tests.console.test_browser import ARTIFACTS, BADGES, chromium_browser
from tests.worker.conftest import start_worker_process

pytestmark = [pytest.mark.browser, pytest.mark.slow(10)]

DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=390, height=844)
RED = "rgb(207, 34, 46)"
PASSWORD = "correct horse"

NewPage = Callable[..., Page]


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium_browser() as launched:
        yield launched


@pytest.fixture
def new_page(browser: Browser, served_console: str) -> NewPage:
    """A page in a fresh context: a viewport, and JavaScript on or off."""

    def make(viewport: ViewportSize = DESKTOP, javascript: bool = True) -> Page:
        context = browser.new_context(
            base_url=served_console, viewport=viewport, java_script_enabled=javascript
        )
        context.set_default_timeout(15_000)
        return context.new_page()

    return make


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, email: str) -> None:
    page.goto("/signin")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Projects")


def create_project(page: Page, name: str, environment: str) -> str:
    page.goto("/projects")
    page.fill("#create-project input[name=name]", name)
    page.select_option("select#environment", environment)
    page.click("#create-project button[type=submit]")
    expect(page.locator(".project-header .project-name")).to_have_text(name)
    return page.url.split("#")[0]


def scalar(database_url: str, query: str, *args: Any) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]


def project_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def test_reload_after_create_repeats_nothing_and_secrets_show_once(
    new_page: NewPage, database_url: str
) -> None:
    page = new_page()
    sign_in(page, "ada@example.com")
    url = create_project(page, "checkout", "dev")
    pid = project_id(url)

    page.fill("#create-key input[name=name]", "backend")
    page.click("#create-key button[type=submit]")
    secret = page.locator("#new-key-value").inner_text()
    assert secret.startswith("nm_dev_sk_")
    # The address bar holds the project page (a GET), never the POST's URL or the secret.
    assert page.url == f"{url}#keys"
    shot(page, "20-key-shown-once")

    page.reload()
    expect(page.locator(".project-header .project-name")).to_have_text("checkout")
    expect(page.locator("#new-key")).to_have_count(0)
    assert secret not in page.content()
    assert scalar(database_url, "select count(*) from api_keys where project_id = %s", pid) == 1
    page.go_back()
    page.go_forward()
    assert scalar(database_url, "select count(*) from api_keys where project_id = %s", pid) == 1

    page.fill("#create-endpoint input[name=url]", "https://example.com/hooks")
    page.click("#create-endpoint button[type=submit]")
    signing = page.locator("#new-endpoint-value").inner_text()
    assert signing.startswith("whsec_")
    page.reload()
    expect(page.locator("#endpoint-list tbody tr")).to_have_count(1)
    assert signing not in page.content()
    assert (
        scalar(database_url, "select count(*) from webhook_endpoints where project_id = %s", pid)
        == 1
    )

    # A refusal redirects too: reloading it repeats nothing and the message is gone.
    page.click("#send-test-event")
    expect(page.locator("#page-notice")).to_contain_text("Test event sent")
    page.reload()
    expect(page.locator("#page-notice")).to_have_count(0)
    assert scalar(database_url, "select count(*) from events where project_id = %s", pid) == 1
    shot(page, "21-after-reloads")


@dataclass
class Inbox:
    """What the loopback receiver got, with each signature checked against the page's secret."""

    secret: str = ""
    verified: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, object]:
        try:
            self.verified.append(Webhook(self.secret).verify(body, headers))
        except Exception as exc:
            self.refused.append(repr(exc))
            return 400, {"ok": False}
        return 200, {"ok": True}


def test_delivery_log_shows_a_test_events_success_without_reload(
    new_page: NewPage, database_url: str
) -> None:
    inbox = Inbox()
    page = new_page()
    sign_in(page, "grace@example.com")
    create_project(page, "receiver demo", "staging")
    with json_server(inbox.answer) as base:
        page.fill("#create-endpoint input[name=url]", f"{base}/hook")
        page.click("#create-endpoint button[type=submit]")
        inbox.secret = page.locator("#new-endpoint-value").inner_text()

        worker: subprocess.Popen[bytes] = start_worker_process(database_url)
        try:
            page.click("#send-test-event")
            expect(page.locator("#page-notice")).to_contain_text("Test event sent")
            # From here on, no navigation: a marker on the window would be lost by a reload.
            page.evaluate("window.__sameDocument = true")
            row = page.locator("#delivery-list tbody tr").first
            expect(row).to_contain_text("webhook.test")
            status = row.locator(".delivery-status")
            expect(status).to_contain_text("succeeded (200)", timeout=45_000)
            # The endpoint's counts follow along, on the same page.
            counts = page.locator("#endpoint-list .endpoint-counts .counts")
            expect(counts).to_have_attribute("data-succeeded", "1")
            expect(counts).to_contain_text("1 succeeded, 0 failed")
            assert page.evaluate("window.__sameDocument") is True
            shot(page, "22-delivery-arrived-live")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert inbox.refused == []
    assert [event["type"] for event in inbox.verified] == ["webhook.test"]


LONG_NAME = "Payments reconciliation service for the northern European storefronts (EU-N) v2"
LONG_URL = (
    "https://hooks.example-enterprise-customer.com/api/v2/integrations/environment-parity/"
    "webhooks/receive?tenant=acme-holdings-international&signature=required&retry=true"
)


def geometry(page: Page) -> dict[str, Any]:
    """The page's width against the viewport, and every visible control or hint that leaves it
    (or is cut off inside its own box)."""
    result: dict[str, Any] = page.evaluate(
        """() => {
          const width = window.innerWidth;
          const outside = [];
          const visible = (el) => el.getClientRects().length > 0;
          const watched = 'button, summary, input:not([type=hidden]), select, a,'
            + ' .confirm-label span, .hint, code';
          for (const el of document.querySelectorAll(watched)) {
            if (!visible(el)) continue;
            const r = el.getBoundingClientRect();
            const clipped = el.matches('.confirm-label span, .hint')
              && el.scrollWidth > el.clientWidth + 1;
            if (r.left < -0.5 || r.right > width + 0.5 || clipped) {
              outside.push(`${el.tagName} ${(el.textContent || el.name || '').trim().slice(0, 50)}`
                + ` [${Math.round(r.left)}, ${Math.round(r.right)}]`);
            }
          }
          return {scroll: document.documentElement.scrollWidth, width, outside,
                  buttons: document.querySelectorAll('button').length};
        }"""
    )
    return result


@pytest.mark.parametrize(("viewport", "tag"), [(DESKTOP, "1280"), (PHONE, "390")])
def test_layout_holds_with_long_names_and_urls(
    new_page: NewPage, viewport: ViewportSize, tag: str
) -> None:
    page = new_page(viewport)
    sign_in(page, f"layout-{tag}-with-a-rather-long-address@example-enterprise-customer.com")
    create_project(page, LONG_NAME, "prod")
    # One unbroken word of 100 characters: it must wrap, not widen the table.
    page.fill("#create-key input[name=name]", "backend-" + "x" * 92)
    page.click("#create-key button[type=submit]")
    page.fill("#create-endpoint input[name=url]", LONG_URL)
    page.fill("#create-endpoint input[name=description]", "Finance team's reconciliation hook")
    page.click("#create-endpoint button[type=submit]")
    assert len(LONG_URL) >= 140
    page.click("#send-test-event")
    expect(page.locator("#delivery-list tbody tr")).to_have_count(1)
    # Every confirmation open, so its hint is measured too.
    for summary in page.locator("details.danger-action > summary").all():
        summary.click()
    expect(page.locator(".confirm-label").first).to_be_visible()

    measured = geometry(page)
    shot(page, f"23-layout-{tag}")
    assert measured["width"] == viewport["width"]
    assert measured["scroll"] <= measured["width"], measured
    assert measured["outside"] == [], measured
    assert measured["buttons"] >= 6
    hint = page.locator("#delete-project .confirm-label span")
    expect(hint).to_have_text(f"Type the project name {LONG_NAME} to confirm")

    page.goto("/projects")
    measured = geometry(page)
    shot(page, f"24-project-list-{tag}")
    assert measured["scroll"] <= measured["width"], measured
    assert measured["outside"] == [], measured


def test_danger_is_red_and_asks_in_every_environment_even_without_javascript(
    new_page: NewPage, database_url: str
) -> None:
    page = new_page()
    sign_in(page, "linus@example.com")
    urls = {env: create_project(page, f"{env} danger", env) for env in ("prod", "dev", "staging")}

    page.goto(urls["prod"])
    banner = page.locator("#prod-warning")
    banner_colours = banner.evaluate(
        "el => [getComputedStyle(el).backgroundColor, getComputedStyle(el).borderLeftColor]"
    )
    badge_colours = {colour for _, colour in BADGES.values()}
    assert not badge_colours & set(banner_colours), banner_colours
    assert banner_colours[1] == RED

    page.fill("#create-endpoint input[name=url]", "https://example.com/hook")
    page.click("#create-endpoint button[type=submit]")
    for label in ("Delete", "Delete project"):
        summary = page.locator("summary.danger", has_text=label).first
        assert summary.evaluate("el => getComputedStyle(el).backgroundColor") == RED
    disable = page.locator("#endpoint-list button", has_text="Disable")
    assert disable.evaluate("el => getComputedStyle(el).backgroundColor") != RED
    create = page.locator("#create-key button[type=submit]")
    assert create.evaluate("el => getComputedStyle(el).backgroundColor") != RED
    shot(page, "25-danger-prod")

    # Dev and staging: a click opens the confirmation; the browser refuses an unticked box, and
    # all of it works with JavaScript off.
    plain = new_page(javascript=False)
    sign_in(plain, "linus@example.com")
    for environment in ("dev", "staging"):
        plain.goto(urls[environment])
        delete = plain.locator("#delete-project")
        delete.locator("summary").click()
        box = delete.locator("input[name=confirm][type=checkbox]")
        expect(box).to_be_visible()
        delete.locator("button[type=submit]").click()
        assert box.evaluate("el => el.validity.valueMissing")
        assert plain.url == urls[environment]
        shot(plain, f"26-confirm-{environment}-no-js")
        box.check()
        delete.locator("button[type=submit]").click()
        expect(plain.locator("#page-notice")).to_contain_text(
            f"Deleted the project {environment} danger."
        )
        assert (
            scalar(
                database_url,
                "select count(*) from projects where id = %s",
                project_id(urls[environment]),
            )
            == 0
        )


def test_environment_change_and_the_databases_refusal(new_page: NewPage) -> None:
    page = new_page()
    sign_in(page, "barbara@example.com")
    url = create_project(page, "migrating", "dev")
    page.select_option("#change-environment select[name=environment]", "staging")
    page.click("#change-environment button[type=submit]")
    expect(page.locator("#page-notice")).to_have_text("The project is now in Staging.")
    expect(page.locator(".project-header .badge")).to_have_text("Staging")

    page.click("#create-key button[type=submit]")
    page.select_option("#change-environment select[name=environment]", "prod")
    page.click("#change-environment button[type=submit]")
    error = page.locator("#page-error")
    expect(error).to_contain_text("1 active")
    expect(page.locator("#page-error-hint")).to_contain_text(
        "Revoke the project's active keys first"
    )
    expect(page.locator(".project-header .badge")).to_have_text("Staging")
    assert page.url == f"{url}#environment"
    shot(page, "27-environment-locked")


def test_usage_chart_matches_the_counters_without_javascript(
    new_page: NewPage, database_url: str
) -> None:
    page = new_page(javascript=False)
    sign_in(page, "margaret@example.com")
    urls = {env: create_project(page, f"{env} usage", env) for env in ("prod", "staging")}
    seeded = {"prod": 8_200, "staging": 12_345}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for env, requests in seeded.items():
            pid = project_id(urls[env])
            conn.execute(
                "update projects set request_cap = 10000, rate_limit = 100 where id = %s", (pid,)
            )
            conn.execute(
                "insert into usage_counters (project_id, window_start, requests, request_cap)"
                " values (%s, to_timestamp(floor(extract(epoch from now()) / 86400) * 86400),"
                " %s, 10000)",
                (pid, requests),
            )
        started = conn.execute(
            "select extract(epoch from now() - to_timestamp(floor(extract(epoch from now())"
            " / 86400) * 86400))"
        ).fetchone()
    assert started is not None

    page.goto(urls["prod"])
    cap = page.locator("#usage-cap")
    assert cap.get_attribute("data-requests") == "8200"
    assert cap.get_attribute("data-limit") == "10000"
    expect(cap).to_contain_text("8,200 of 10,000 requests (82%)")
    expect(page.locator("#usage-verdict")).to_contain_text("82% of the hard cap")
    fill = cap.locator("rect.meter-fill")
    assert fill.get_attribute("width") == str(round(0.82 * 330))
    rate = page.locator("#usage-rate")
    assert rate.get_attribute("data-limit") == "100"
    # The average per 60 s window since the cap window began, as the page computed it.
    windows = max(1.0, float(started[0]) / 60)
    assert float(rate.get_attribute("data-average") or "nan") == pytest.approx(
        8_200 / windows, rel=0.05
    )
    shot(page, "28-usage-prod")

    page.goto(urls["staging"])
    expect(page.locator("#usage-cap")).to_contain_text("12,345 of 10,000 requests (123%)")
    verdict = page.locator("#usage-verdict")
    expect(verdict).to_contain_text("Warning: over the hard cap")
    expect(verdict).to_contain_text("Staging projects are not suspended")
    assert page.locator("#usage-rate").get_attribute("data-limit") == "500"
    shot(page, "29-usage-staging-over-cap")


def test_favicon_is_served_and_linked(new_page: NewPage) -> None:
    page = new_page()
    icon = page.request.get("/favicon.ico")
    assert icon.status == 200
    assert icon.headers["content-type"] == "image/x-icon"
    page.goto("/signin")
    assert page.locator("link[rel=icon]").get_attribute("href") == "/favicon.ico"
