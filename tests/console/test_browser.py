"""The dashboard in a real browser: Playwright driving Debian's Chromium, headless, against the
console served by uvicorn on a free loopback port. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

DEFAULT_CHROMIUM = "/usr/bin/chromium"  # Debian's package
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# (value, label, expected background colour): prod green, dev blue, staging yellow.
BADGES = {
    "prod": ("Production", "rgb(26, 127, 55)"),
    "dev": ("Development", "rgb(9, 105, 218)"),
    "staging": ("Staging", "rgb(212, 167, 44)"),
}

pytestmark = pytest.mark.browser


@contextmanager
def chromium_browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (skips when it is not installed)."""
    chromium = Path(os.environ.get("PARITY_CHROMIUM", DEFAULT_CHROMIUM))
    if not chromium.exists():
        pytest.skip(f"Chromium not found at {chromium}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(served_console: str) -> Iterator[Page]:
    with chromium_browser() as browser:
        context = browser.new_context(base_url=served_console)
        context.set_default_timeout(15_000)
        yield context.new_page()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def badge_style(badge: Locator) -> str:
    colour: str = badge.evaluate("el => getComputedStyle(el).backgroundColor")
    return colour


def test_environments_badges_banner_and_a_key_shown_once(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin$"))
    page.fill("input[name=email]", "ada@example.com")
    page.fill("input[name=password]", "correct horse")
    shot(page, "01-signin")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Projects")

    select = page.locator("select#environment")
    expect(select).to_have_value("prod")
    assert select.locator("option:checked").inner_text() == "Production"
    assert [o.inner_text() for o in select.locator("option").all()] == [
        "Production",
        "Development",
        "Staging",
    ]
    help_items = page.locator("#environment-help [data-environment]")
    visible = page.locator("#environment-help [data-environment]:visible")
    expect(visible).to_have_count(1)
    expect(visible).to_contain_text("Rate limit: 1x")
    expect(visible).to_contain_text("Auto-suspend on hard caps: on")
    assert help_items.count() == 3
    shot(page, "02-create-form-production")

    select.select_option("dev")
    expect(visible).to_have_count(1)
    expect(visible).to_contain_text("Rate limit: 10x")
    expect(visible).to_contain_text("retried without limit")
    select.select_option("staging")
    expect(visible).to_contain_text("Rate limit: 5x")
    expect(visible).to_contain_text("retried 5 times")
    shot(page, "03-create-form-staging")

    project_urls = {}
    for environment, name in [("prod", "shop"), ("dev", "lab"), ("staging", "qa")]:
        page.goto("/projects")
        page.fill("#create-project input[name=name]", name)
        page.select_option("select#environment", environment)
        page.click("#create-project button[type=submit]")
        expect(page.locator(".project-header h1")).to_contain_text(name)
        project_urls[environment] = page.url

    page.goto("/projects")
    for environment, (label, colour) in BADGES.items():
        badge = page.locator(f"#project-list .badge[data-environment={environment}]")
        expect(badge).to_have_text(label)
        assert badge_style(badge) == colour
    shot(page, "04-project-list")

    for environment, (label, colour) in BADGES.items():
        page.goto(project_urls[environment])
        badge = page.locator(".project-header .badge")
        expect(badge).to_have_text(label)
        assert badge_style(badge) == colour
        banner = page.locator("#prod-warning")
        if environment == "prod":
            expect(banner).to_be_visible()
            expect(banner).to_contain_text("Production project")
        else:
            expect(banner).to_have_count(0)
        shot(page, f"05-project-{environment}")

    # A key in the prod project: its secret once, then only prefix and last four.
    page.goto(project_urls["prod"])
    page.fill("#create-key input[name=name]", "backend")
    page.click("#create-key button[type=submit]")
    secret = page.locator("#new-key-value").inner_text()
    assert secret.startswith("nm_live_sk_")
    expect(page.locator("#new-key button[data-copy]")).to_be_visible()
    shot(page, "06-key-created")
    page.goto(project_urls["prod"])
    expect(page.locator("#new-key")).to_have_count(0)
    assert secret not in page.content()
    row = page.locator("#key-list tbody tr").first
    expect(row).to_contain_text(f"nm_live_sk_…{secret[-4:]}")
    expect(row.locator(".key-status")).to_have_text("active")

    # Revoking in prod asks for the project's name.
    revoke = page.locator("#key-list details.danger-action").first
    revoke.locator("summary").click()
    revoke.locator("input[name=confirm_name]").fill("shop")
    revoke.locator("button[type=submit]").click()
    expect(page.locator("#key-list tbody tr").first.locator(".key-status")).to_have_text("revoked")
    shot(page, "07-key-revoked")

    # The Activity card: the revocation on top, by you, in UTC; then the key's issue, the project.
    activity = page.locator("#activity-list tbody tr")
    expect(activity).to_have_count(3)
    newest = activity.first
    expect(newest.locator("td[data-label=What]")).to_contain_text("revoked an API key")
    expect(newest.locator("td[data-label=Who]")).to_contain_text("you")
    expect(newest.locator("td[data-label=When]")).to_contain_text(" UTC")
    expect(newest.locator("td[data-label=Changes]")).to_contain_text('status: "active" → "revoked"')
    expect(activity.nth(1)).to_contain_text("issued an API key")
    expect(activity.nth(2)).to_contain_text("created the project")
    assert secret not in page.locator("#activity").inner_text()
    page.locator("#activity").scroll_into_view_if_needed()
    shot(page, "07b-activity")


def test_webhooks_delivery_log_and_typed_confirmation_of_a_prod_delete(page: Page) -> None:
    page.goto("/signin")
    page.fill("input[name=email]", "grace@example.com")
    page.fill("input[name=password]", "correct horse")
    page.click("#signin-form button[type=submit]")
    page.fill("#create-project input[name=name]", "storefront")
    page.click("#create-project button[type=submit]")
    expect(page.locator("#prod-warning")).to_be_visible()

    page.fill("#create-endpoint input[name=url]", "https://example.com/hooks")
    page.click("#create-endpoint button[type=submit]")
    secret = page.locator("#new-endpoint-value").inner_text()
    assert secret.startswith("whsec_")
    page.click("#send-test-event")
    expect(page.locator(".notice")).to_contain_text("Test event sent")
    assert secret not in page.content()
    row = page.locator("#delivery-list tbody tr").first
    expect(row).to_contain_text("webhook.test")
    expect(row).to_contain_text("pending")
    shot(page, "08-delivery-log")

    # The browser will not submit the prod delete without the name; a wrong name is refused.
    delete = page.locator("#delete-project")
    before = page.url
    delete.locator("summary").click()
    delete.locator("button[type=submit]").click()
    expect(page).to_have_url(before)
    assert delete.locator("input[name=confirm_name]").evaluate("el => el.validity.valueMissing")
    delete.locator("input[name=confirm_name]").fill("storefrontt")
    delete.locator("button[type=submit]").click()
    expect(page.locator("#page-error")).to_contain_text(
        "type the project name exactly as shown: storefront"
    )
    shot(page, "09-prod-delete-refused")
    delete.locator("summary").click()
    page.locator("#delete-project input[name=confirm_name]").fill("storefront")
    page.locator("#delete-project button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/projects$"))
    expect(page.locator("#project-list")).to_have_count(0)


def test_an_app_endpoint_added_in_dev_promoted_to_staging_then_prod(page: Page) -> None:
    page.goto("/signin")
    page.fill("input[name=email]", "hedy@example.com")
    page.fill("input[name=password]", "correct horse")
    page.click("#signin-form button[type=submit]")
    page.click("#nav-apps")
    expect(page.locator("h1")).to_have_text("Apps")
    page.fill("#create-app input[name=name]", "shop")
    expect(page.locator("#create-app input[name=create_projects]")).to_be_checked()
    page.click("#create-app button[type=submit]")
    expect(page.locator("h1")).to_contain_text("shop")

    # Three environments side by side, each with its badge and project.
    columns = page.locator(".env-column")
    expect(columns).to_have_count(3)
    boxes = [column.bounding_box() for column in columns.all()]
    assert all(box is not None for box in boxes)
    assert len({round(box["y"]) for box in boxes if box}) == 1  # one row
    for environment, (label, colour) in BADGES.items():
        badge = page.locator(f"#env-{environment} .badge")
        expect(badge).to_have_text(label)
        assert badge_style(badge) == colour
        expect(page.locator(f"#env-{environment} a.project-name")).to_have_text(
            f"shop-{environment}"
        )
    app_url = page.url

    # An endpoint in dev, named, reached from the app page.
    page.click("#env-dev a.project-name")
    expect(page.locator("#project-app a")).to_have_text("shop")
    page.fill("#create-endpoint input[name=name]", "orders")
    page.fill("#create-endpoint input[name=url]", "https://dev.example.com/orders")
    page.fill("#create-endpoint input[name=event_types]", "order.created order.paid")
    page.click("#create-endpoint button[type=submit]")
    expect(page.locator("#new-endpoint")).to_contain_text("orders")
    page.click("#project-app a")

    # Drift against staging, highlighted; policy greyed.
    expect(page).to_have_url(app_url)
    drift = page.locator('#parity-report tr[data-field="endpoints.orders"]')
    expect(drift).to_have_attribute("data-class", "drift")
    expect(drift).to_have_attribute("data-promotable", "yes")
    assert drift.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(255, 248, 197)"
    policy = page.locator('#parity-report tr[data-class="policy"]').first
    assert policy.locator("td").first.evaluate("el => getComputedStyle(el).color") == (
        "rgb(89, 99, 110)"
    )
    shot(page, "10-app-drift")

    # dev → staging: the plan first, then apply with staging's URL.
    page.click("#promote-dev-staging")
    plan = page.locator("#plan-list tbody tr")
    expect(plan).to_have_count(1)
    expect(plan.first).to_contain_text("create endpoint")
    expect(plan.first).to_contain_text("orders")
    expect(page.locator("input[name=confirm_name]")).to_have_count(0)
    shot(page, "11-promotion-plan-staging")
    page.fill("input[name='url.orders']", "https://staging.example.com/orders")
    page.click("#apply-button")
    expect(page.locator("#promote .notice")).to_contain_text(
        "Promoted 1 change from Development to Staging."
    )
    staging_secret = page.locator('#new-secrets code[data-secret-for="orders"]').inner_text()
    assert staging_secret.startswith("whsec_")
    expect(page.locator('#parity-report tr[data-promotable="yes"]')).to_have_count(0)
    expect(page.locator('#parity-report tr[data-field="endpoints.orders.url"]')).to_have_attribute(
        "data-class", "environment-specific"
    )
    page.reload()
    expect(page.locator("#new-secrets")).to_have_count(0)
    assert staging_secret not in page.content()  # shown once

    # staging → prod: the plan, the prod banner and the typed name.
    page.select_option("#compare select[name=from]", "staging")
    page.select_option("#compare select[name=to]", "prod")
    page.click("#compare button[type=submit]")
    expect(page.locator('#parity-report tr[data-field="endpoints.orders"]')).to_have_attribute(
        "data-promotable", "yes"
    )
    page.click("#promote-staging-prod")
    expect(page.locator("#prod-warning")).to_be_visible()
    page.fill("input[name='url.orders']", "https://api.example.com/orders")
    before = page.url
    page.click("#apply-button")
    expect(page).to_have_url(before)  # the browser asks for the name first
    page.fill("input[name=confirm_name]", "shop")
    page.click("#apply-button")
    expect(page.locator("#apply #page-error")).to_contain_text("shop-prod")
    expect(page.locator("input[name='url.orders']")).to_have_value("https://api.example.com/orders")
    page.fill("input[name=confirm_name]", "shop-prod")
    shot(page, "12-promotion-plan-prod")
    page.click("#apply-button")
    expect(page.locator("#promote .notice")).to_contain_text("to Production.")
    prod_secret = page.locator('#new-secrets code[data-secret-for="orders"]').inner_text()
    assert prod_secret.startswith("whsec_") and prod_secret != staging_secret
    expect(page.locator('#parity-report tr[data-promotable="yes"]')).to_have_count(0)
    expect(page.locator("#no-promotable-drift")).to_be_visible()
    shot(page, "13-app-promoted")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: environments stack
    shot(page, "13b-app-promoted-narrow")
    page.set_viewport_size({"width": 1280, "height": 720})
    page.reload()
    assert prod_secret not in page.content()

    # Dev against prod: clean of promotable drift as well, policy and URLs remain.
    page.goto(f"{app_url}?from=dev&to=prod")
    expect(page.locator('#parity-report tr[data-promotable="yes"]')).to_have_count(0)
    expect(page.locator('#parity-report tr[data-class="policy"]').first).to_be_visible()
