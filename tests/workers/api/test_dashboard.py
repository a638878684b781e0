"""The operations dashboard: its JSON, who may open it, and the page in a real browser.

The browser test runs Debian's chromium (headless, driven by Playwright) against a real
uvicorn server over a seeded ledger and the real Redis, signs in as an operator would, and
leaves a screenshot in var/screenshots/dashboard.png.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from pipeline.access.tokens import Caller
from pipeline.db import migrate, session_factory, utcnow
from pipeline.settings import Settings
from tests.workers.api.dashboard_ledger import (
    ACTIVE,
    AE_REASON,
    AR_REASON,
    DELIVERED_60MIN,
    DESTINATIONS,
    EQUIPPED,
    FAILED_60MIN,
    FORMATS_24H,
    LAB,
    OPEN_CIRCUIT,
    RECEIVED_60MIN,
    REJECTS,
    STAGES,
    STATES,
    Tokens,
    seed_dashboard_ledger,
)
from workers.api.app import create_app
from workers.api.auth import SESSION_COOKIE, require
from workers.queues import PRIORITY_SUFFIXES, STAGE_QUEUES
from workers.stack import free_port

REPOSITORY = Path(__file__).resolve().parents[3]
SCREENSHOT = REPOSITORY / "var" / "screenshots" / "dashboard.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Tasks put in the broker's queues before the dashboard reads them.
QUEUED = {"labdispatch.route": 2, "labdispatch.seal": 3, "labdispatch.send": 0}
#: The one URL-looking string the assets may hold: SVG's XML namespace, a name, not a fetch.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@dataclass(frozen=True)
class Dashboard:
    app: FastAPI
    tokens: Tokens
    settings: Settings


@pytest.fixture
def dashboard(settings: Settings, engine: Engine, redis_url: str, tmp_path: Path) -> Dashboard:
    """The API over the seeded ledger, its broker the test Redis."""
    migrate(engine)
    sessions = session_factory(engine)
    key_file = tmp_path / "storage.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key_file.chmod(0o600)
    settings = replace(
        settings,
        storage_key_file=key_file,
        service=replace(settings.service, broker_url=redis_url),
    )
    app = create_app(settings, sessions=sessions, after_commit=lambda ids: None)
    # Seeded once the app has checked its storage key against the ledger: the seeded rows
    # carry a made-up key id ("test"; their bytes are never read by the figures).
    with sessions() as session:
        tokens = seed_dashboard_ledger(session, utcnow())
    return Dashboard(app, tokens, settings)


@pytest.fixture
def queued(redis_url: str) -> Iterator[dict[str, int]]:
    client = redis.Redis.from_url(redis_url)
    keys = [queue + suffix for queue in STAGE_QUEUES for suffix in PRIORITY_SUFFIXES]
    client.delete(*keys)
    for queue, count in QUEUED.items():
        if count:
            client.lpush(queue, *[b"{}"] * count)
    try:
        yield {queue: QUEUED.get(queue, 0) for queue in STAGE_QUEUES}
    finally:
        client.delete(*keys)
        client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def minutes_of(seconds: float | None) -> int:
    assert seconds is not None
    return int(seconds // 60)


# --- the JSON -------------------------------------------------------------------------------


def test_dashboard_json_for_ops_is_the_ledgers_figures_and_the_queues(
    dashboard: Dashboard, queued: dict[str, int]
) -> None:
    with TestClient(dashboard.app) as client:
        response = client.get("/v1/dashboard", headers=bearer(dashboard.tokens.ops))

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    figures = response.json()
    assert figures["deliveries_by_state"] == STATES
    assert figures["received_by_format"] == FORMATS_24H
    assert [
        (s["stage"], s["waiting"], minutes_of(s["oldest_age_seconds"])) for s in figures["stages"]
    ] == STAGES
    throughput = figures["throughput"]
    assert len(throughput["minutes"]) == 60
    assert (sum(throughput["received"]), sum(throughput["delivered"])) == (
        RECEIVED_60MIN,
        DELIVERED_60MIN,
    )
    assert sum(throughput["failed"]) == FAILED_60MIN
    assert [
        (d["destination"], d["open"], minutes_of(d["oldest_age_seconds"]), d["failed_24h"])
        for d in figures["slowest_destinations"]
    ] == DESTINATIONS
    assert [(r["control_id"], r["ack_code"], r["reason"]) for r in figures["recent_rejects"]] == (
        REJECTS
    )
    assert all(r["laboratory"] == LAB for r in figures["recent_rejects"])
    assert (figures["adoption"]["equipped"], figures["adoption"]["active"]) == (EQUIPPED, ACTIVE)
    assert [(c["destination"], c["state"]) for c in figures["circuits"]] == [(OPEN_CIRCUIT, "open")]
    assert figures["circuits"][0]["open_until"] is not None
    assert figures["broker"] == {"up": True, "error": None}
    assert {q["queue"]: q["depth"] for q in figures["queues"]} == queued


def test_dashboard_json_is_for_ops_and_admin_only(dashboard: Dashboard) -> None:
    tokens = dashboard.tokens
    with TestClient(dashboard.app) as client:
        statuses = {
            role: client.get("/v1/dashboard", headers=bearer(token)).status_code
            for role, token in [
                ("admin", tokens.admin),
                ("lab", tokens.lab),
                ("billing", tokens.billing),
                ("unknown", "ldt_not-a-token-we-made"),
            ]
        }
        anonymous = client.get("/v1/dashboard")

    assert statuses == {"admin": 200, "lab": 403, "billing": 403, "unknown": 401}
    assert anonymous.status_code == 401
    assert LAB not in anonymous.text


def test_dashboard_json_without_a_broker_says_so_and_keeps_the_ledgers_figures(
    dashboard: Dashboard,
) -> None:
    # The embedded default, not running: reading the depths must not start it.
    settings = replace(
        dashboard.settings, service=replace(dashboard.settings.service, broker_url="")
    )
    dashboard.app.state.settings = settings

    with TestClient(dashboard.app) as client:
        figures = client.get("/v1/dashboard", headers=bearer(dashboard.tokens.ops)).json()

    assert figures["broker"]["up"] is False
    assert "not running" in figures["broker"]["error"]
    assert figures["queues"] == []
    assert figures["deliveries_by_state"] == STATES
    assert not (settings.var_dir / "broker" / "redis.pid").exists()


# --- signing in -----------------------------------------------------------------------------


def test_page_without_a_session_is_a_sign_in_form_showing_no_figures(
    dashboard: Dashboard,
) -> None:
    with TestClient(dashboard.app) as client:
        response = client.get("/")

    assert response.status_code == 401
    page = response.text
    assert '<form method="post" action="/session"' in page
    assert 'type="password"' in page
    assert 'data-testid="state-' not in page and "dashboard.js" not in page
    for figure in (LAB, AE_REASON, AR_REASON, OPEN_CIRCUIT, "example.org"):
        assert figure not in page
    assert "default-src 'none'" in response.headers["content-security-policy"]


@pytest.mark.parametrize("role", ["lab", "billing"])
def test_signing_in_with_a_lab_or_billing_token_is_refused(dashboard: Dashboard, role: str) -> None:
    with TestClient(dashboard.app) as client:
        response = client.post(
            "/session", data={"token": getattr(dashboard.tokens, role)}, follow_redirects=False
        )
        page = client.get("/")

    assert response.status_code == 403
    assert f"A {role} token cannot open the operations dashboard" in response.text
    assert "set-cookie" not in response.headers
    assert page.status_code == 401


def test_signing_in_with_an_unknown_token_is_refused(dashboard: Dashboard) -> None:
    with TestClient(dashboard.app) as client:
        response = client.post("/session", data={"token": "ldt_guess"}, follow_redirects=False)

    assert response.status_code == 401
    assert "unknown or has been revoked" in response.text
    assert "set-cookie" not in response.headers


def test_signing_in_with_an_ops_token_sets_a_strict_http_only_cookie_and_opens_the_page(
    dashboard: Dashboard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(dashboard.app) as client:
        signed_in = client.post(
            "/session", data={"token": dashboard.tokens.ops}, follow_redirects=False
        )
        page = client.get("/")
        figures = client.get("/v1/dashboard")  # the cookie alone, no header
        signed_out = client.post("/session/end", follow_redirects=False)
        after = client.get("/")
        figures_after = client.get("/v1/dashboard")

    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={dashboard.tokens.ops};")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain http here; https requests get Secure
    assert dashboard.tokens.ops not in signed_in.headers["location"]

    assert page.status_code == 200
    assert '<script src="/static/dashboard.js"' in page.text
    assert figures.status_code == 200 and figures.json()["deliveries_by_state"] == STATES

    assert signed_out.status_code == 303
    assert after.status_code == 401 and figures_after.status_code == 401
    assert "/session" in caplog.text  # the calls were logged, the token was not
    assert dashboard.tokens.ops not in caplog.text


def test_signing_in_over_https_makes_the_cookie_secure(dashboard: Dashboard) -> None:
    with TestClient(dashboard.app, base_url="https://testserver") as client:
        response = client.post(
            "/session", data={"token": dashboard.tokens.ops}, follow_redirects=False
        )

    assert response.status_code == 303
    attributes = {part.strip().lower() for part in response.headers["set-cookie"].split(";")}
    assert {"secure", "httponly", "samesite=strict"} <= attributes


def test_signing_in_from_another_site_is_refused(dashboard: Dashboard) -> None:
    with TestClient(dashboard.app) as client:
        response = client.post(
            "/session",
            data={"token": dashboard.tokens.ops},
            headers={"Origin": "https://elsewhere.example"},
            follow_redirects=False,
        )

    assert response.status_code == 403
    assert "set-cookie" not in response.headers


def test_routes_that_ask_for_a_bearer_token_do_not_take_the_cookie(dashboard: Dashboard) -> None:
    @dashboard.app.get("/bearer-only")
    def bearer_only(caller: Caller = Depends(require("ops"))) -> str:  # noqa: B008
        return caller.role

    with TestClient(dashboard.app) as client:
        client.cookies.set(SESSION_COOKIE, dashboard.tokens.ops)
        by_cookie = client.get("/bearer-only")
        by_header = client.get("/bearer-only", headers=bearer(dashboard.tokens.ops))

    assert by_cookie.status_code == 401
    assert by_header.status_code == 200


# --- the assets -----------------------------------------------------------------------------


def test_page_and_assets_reference_nothing_outside_the_app(dashboard: Dashboard) -> None:
    with TestClient(dashboard.app) as client:
        client.cookies.set(SESSION_COOKIE, dashboard.tokens.ops)
        page = client.get("/")
        sign_in = client.post("/session", data={"token": "ldt_guess"})
        referenced = re.findall(r'(?:src|href)="([^"]*)"', page.text + sign_in.text)
        assets = {path: client.get(path) for path in sorted(set(referenced))}

    assert page.status_code == 200
    assert sorted(set(referenced)) == [
        "/static/dashboard.css",
        "/static/dashboard.js",
        "/static/favicon.svg",
    ]
    for path, response in assets.items():
        assert response.status_code == 200, path
    served = {"/": page.text, "/session": sign_in.text} | {
        path: response.text for path, response in assets.items()
    }
    for path, text in served.items():
        outside = re.findall(r"https?://[^\s\"'`)<>]+|//cdn", text)
        assert [url for url in outside if url != SVG_NAMESPACE] == [], path
        assert "@import" not in text and "url(" not in text, path


def test_only_the_dashboards_own_assets_are_served(dashboard: Dashboard) -> None:
    with TestClient(dashboard.app) as client:
        statuses = [
            client.get(path).status_code
            for path in ("/static/dashboard.html", "/static/auth.py", "/static/..%2Fauth.py")
        ]

    assert statuses == [404, 404, 404]


# --- in a real browser ----------------------------------------------------------------------


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a real uvicorn server in a thread, at the URL given."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the API server did not start", pytrace=False)
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_dashboard_in_chromium_signs_in_shows_the_ledgers_figures_and_leaves_a_screenshot(
    dashboard: Dashboard, queued: dict[str, int], tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Debian's chromium is not installed ({CHROMIUM} is missing): the dashboard's "
            "browser test needs it. Install it with `apt-get install chromium`, or run "
            "scripts/services as root.",
            pytrace=False,
        )
    from playwright.sync_api import expect, sync_playwright

    tokens = dashboard.tokens
    requests: list[str] = []
    console_errors: list[str] = []
    with serving(dashboard.app) as base, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1440, "height": 900},
        )
        try:
            context.on("request", lambda request: requests.append(request.url))
            page = context.new_page()
            page.on(
                "console",
                lambda message: (
                    console_errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error: console_errors.append(str(error)))

            # Without a session: the sign-in form, and nothing of the ledger.
            response = page.goto(base + "/")
            assert response is not None and response.status == 401
            expect(page.get_by_test_id("sign-in")).to_be_visible()
            assert page.locator('[data-testid^="state-"]').count() == 0
            assert LAB not in page.content()

            # A laboratory's token is refused, and leaves no cookie.
            page.get_by_test_id("token-input").fill(tokens.lab)
            with page.expect_response(f"{base}/session") as refused:
                page.get_by_test_id("sign-in-submit").click()
            assert refused.value.status == 403
            expect(page.get_by_test_id("sign-in-error")).to_contain_text("A lab token cannot")
            assert context.cookies() == []

            # An operator's token opens the dashboard.
            page.get_by_test_id("token-input").fill(tokens.ops)
            page.get_by_test_id("sign-in-submit").click()
            page.wait_for_url(base + "/")
            expect(page.locator("body")).to_have_attribute("data-state", "ready")

            for state, count in STATES.items():
                expect(page.get_by_test_id(f"state-{state}")).to_have_text(str(count))
            for fmt, count in FORMATS_24H.items():
                expect(page.get_by_test_id(f"format-{fmt}")).to_have_text(str(count))
            for stage, waiting, minutes in STAGES:
                expect(page.get_by_test_id(f"stage-{stage}-waiting")).to_have_text(str(waiting))
                expect(page.get_by_test_id(f"stage-{stage}-age")).to_have_text(
                    f"oldest waiting {minutes} min"
                )
            for queue, depth in queued.items():
                name = queue.removeprefix("labdispatch.")
                expect(page.get_by_test_id(f"queue-{name}-depth")).to_have_text(str(depth))
            expect(page.get_by_test_id("received-60min")).to_have_text(str(RECEIVED_60MIN))
            expect(page.get_by_test_id("delivered-60min")).to_have_text(str(DELIVERED_60MIN))
            expect(page.get_by_test_id("failed-60min")).to_have_text(str(FAILED_60MIN))
            expect(page.get_by_test_id("adoption-equipped")).to_have_text(str(EQUIPPED))
            expect(page.get_by_test_id("adoption-active")).to_have_text(str(ACTIVE))
            expect(page.get_by_test_id("adoption-percent")).to_have_text(
                f"{round(100 * ACTIVE / EQUIPPED)} %"
            )
            expect(page.get_by_test_id("reject-reason")).to_have_text(
                [reason for _, _, reason in REJECTS]
            )
            expect(page.get_by_test_id("destination-name")).to_have_text(
                [name for name, *_ in DESTINATIONS]
            )
            expect(page.get_by_test_id("circuit-row")).to_contain_text(OPEN_CIRCUIT)
            expect(page.get_by_test_id("broker-status")).to_have_text("broker up")
            expect(page.get_by_test_id("updated-at")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))

            # The token stays out of the page's reach and out of every URL.
            assert page.evaluate("document.cookie") == ""
            (cookie,) = context.cookies()
            assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
                SESSION_COOKIE,
                True,
                "Strict",
            )

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            print(f"dashboard screenshot: {SCREENSHOT}")

            # Signing out brings back the form.
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_test_id("sign-in")).to_be_visible()
        finally:
            context.close()

    assert all(url.startswith(base + "/") for url in requests), requests
    assert not any(tokens.ops in url or tokens.lab in url for url in requests)
    # Chromium logs each refused page load (the sign-in form before, after the lab token,
    # after signing out) as an error; anything else logged is a fault of the page.
    refusal = "Failed to load resource: the server responded with a status of {}"
    assert console_errors == [
        refusal.format("401 (Unauthorized)"),
        refusal.format("403 (Forbidden)"),
        refusal.format("401 (Unauthorized)"),
    ]
