"""The clinic dashboard in a real headless browser: Debian's chromium
(/usr/bin/chromium, installed by scripts/bootstrap.sh), driven by Playwright
pointed at that binary; Playwright's own browser download is never used.

* The page's model (static/model.js) fed made-up messages and a made-up clock.
* The page against a real mosquitto's WebSockets listener, fed retained payloads
  shaped as docs/mqtt.md shows them; the test plays the gateway for commands.
* End to end: real mosquitto, the simulated programmer, the real daemon; an alert
  acknowledged in the page is acknowledged in the retained MQTT alert.
* ``pumpgw demo`` itself, and the exported page served by mosquitto's http_dir.

Screenshots are saved as test artefacts in ``$PUMPGW_TEST_ARTIFACTS`` (default
``test-artifacts/``). ``PUMPGW_UPDATE_DOCS=1`` also writes the README's
screenshot, docs/dashboard.png, from the demo.

Deadlines only stop a broken run from hanging; nothing asserts how fast anything went.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker_fixtures import Subscriber, close_client, connect_client, publish
from payload_examples import ALERT, BATTERY, INFO, STATE
from playwright.sync_api import Browser, Page, expect, sync_playwright
from processes import Process, gateway, gateway_config, simulator

from gateway.broker import BrokerEndpoint, LocalBroker, find_mosquitto, free_loopback_port
from gateway.contract import AckCommand, Alert
from gateway.dashboard.server import DashboardServer, DashboardSettings, export

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-background-networking",  # the closed network refuses Google's hosts
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("PUMPGW_TEST_ARTIFACTS", ROOT / "test-artifacts"))
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"
DEADLINE_MS = 60_000
TABLET = {"width": 768, "height": 1024}  # an iPad in portrait
DESKTOP = {"width": 1280, "height": 900}
GW = "bed-12"


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing; the dashboard tests need Debian's chromium "
            "(scripts/test installs it: apt-get install -y chromium)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def ws_broker() -> Iterator[BrokerEndpoint]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install -y mosquitto)", pytrace=False)
    with LocalBroker(prefer="mosquitto", websockets=True) as broker:
        yield broker.endpoint


@contextmanager
def serving(endpoint: BrokerEndpoint) -> Iterator[DashboardServer]:
    """``pumpgw dashboard``'s server for the broker's WebSockets listener."""
    settings = DashboardSettings(broker_url=f"ws://127.0.0.1:{endpoint.ws_port}/")
    server = DashboardServer(settings, "127.0.0.1", 0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dashboard(ws_broker: BrokerEndpoint) -> Iterator[DashboardServer]:
    with serving(ws_broker) as server:
        yield server


expect.set_options(timeout=DEADLINE_MS)


@contextmanager
def open_page(
    browser: Browser, viewport: dict[str, int] = DESKTOP, **options: Any
) -> Iterator[Page]:
    """A page in a fresh context; it must end with no uncaught error in its scripts."""
    context = browser.new_context(viewport=viewport, **options)  # type: ignore[arg-type]
    page = context.new_page()
    page.set_default_timeout(DEADLINE_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with open_page(browser) as opened:
        yield opened


@pytest.fixture
def client(ws_broker: BrokerEndpoint) -> Iterator[mqtt.Client]:
    c = connect_client(ws_broker)
    try:
        yield c
    finally:
        close_client(c)


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky header sits mid-picture
    page.screenshot(path=str(path), full_page=True)
    return path


def retain(client: mqtt.Client, tail: str, data: Any, gw: str = GW) -> None:
    """Publish a retained message under pumpgw/{gw}/ (bytes as they are, else JSON)."""
    publish(client, f"pumpgw/{gw}/{tail}", data, retain=True)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def card(page: Page, pump: str) -> Any:
    return page.locator(f'.pump[data-pump="{pump}"]')


# --- the model, fed made-up messages and a made-up clock ---------------------------------

MODEL_RUN = """([messages, nowIso, staleAfterS, connected]) => {
  const M = window.PumpgwModel;
  const now = Date.parse(nowIso);
  const m = M.createModel("pumpgw");
  m.connected = connected;
  const accepted = messages.map(([topic, text]) => M.applyMessage(m, topic, text, now));
  const gateways = M.gateways(m).map((gw) => ({
    id: gw.id,
    status: gw.status,
    pumps: M.pumps(gw).map((p) => ({
      id: p.id,
      stale: M.staleReasons(m, gw, p, now, staleAfterS * 1000),
      alerts: M.sortAlerts(p.alerts.values()).map((a) => a.alert_id),
      gauge: M.gaugeLevel(p),
    })),
  }));
  return {
    accepted, ignored: m.ignored, gateways,
    attention: M.attention(m).map((x) => x.alert.alert_id),
    events: m.events.map((e) => e.event_id),
  };
}"""

NOW = "2026-11-30T08:00:30Z"
WARNING_OLDER = {
    **ALERT, "alert_id": "01M8NQFJ00REFILLDUEWARNXXX", "type": "refill_due",
    "severity": "warning", "raised_at": "2026-11-30T07:00:00Z",
}  # fmt: skip


def topic(tail: str, gw: str = GW) -> str:
    return f"pumpgw/{gw}/{tail}"


def run_model(page: Page, messages: list[tuple[str, Any]], connected: bool = True) -> Any:
    wire = [(t, p.decode() if isinstance(p, bytes) else json.dumps(p)) for t, p in messages]
    return page.evaluate(MODEL_RUN, [wire, NOW, 600, connected])


@pytest.fixture
def model_page(page: Page, dashboard: DashboardServer) -> Page:
    page.goto(dashboard.url)
    page.wait_for_function("window.PumpgwModel !== undefined")
    return page


def test_model_sorts_open_alerts_critical_then_unacknowledged_then_oldest(
    model_page: Page,
) -> None:
    out = run_model(
        model_page,
        [
            (topic("status"), b"online"),
            (topic("info"), INFO),
            (topic("pumps/PMP-0001/state"), STATE),
            (topic("pumps/PMP-0001/alerts/battery_low"), BATTERY),  # warning, acknowledged
            (topic("pumps/PMP-0001/alerts/refill_due"), WARNING_OLDER),  # warning, active
            (topic("pumps/PMP-0001/alerts/reservoir_low"), ALERT),  # critical, active
            (
                topic("pumps/PMP-0001/alerts/data_invalid"),
                {**ALERT, "alert_id": "X", "type": "data_invalid", "state": "cleared"},
            ),
        ],
    )
    assert all(out["accepted"]) and out["ignored"] == 0
    expected = [ALERT["alert_id"], WARNING_OLDER["alert_id"], BATTERY["alert_id"]]
    [gw] = out["gateways"]
    assert gw["status"] == "online"
    assert gw["pumps"] == [{"id": "PMP-0001", "stale": [], "alerts": expected, "gauge": "critical"}]
    assert out["attention"] == expected  # the cleared alert is in neither


def test_model_says_why_figures_are_not_current(model_page: Page) -> None:
    old = iso(datetime(2026, 11, 30, 7, 40, tzinfo=UTC))  # 20 min before NOW
    out = run_model(
        model_page,
        [
            (topic("pumps/PMP-0001/state"), STATE),
            (topic("pumps/PMP-0002/state"), {**STATE, "pump_id": "PMP-0002", "stale": True}),
            (topic("pumps/PMP-0003/state"), {**STATE, "pump_id": "PMP-0003", "received_at": old}),
            (
                topic("pumps/PMP-0004/alerts/pump_fault"),
                {**ALERT, "pump_id": "PMP-0004", "type": "pump_fault"},
            ),
            (topic("status", "bed-13"), b"offline"),
            (topic("info", "bed-13"), {**INFO, "gateway_id": "bed-13", "link": "down"}),
            (topic("pumps/PMP-0005/state", "bed-13"), {**STATE, "pump_id": "PMP-0005"}),
        ],
    )
    stale = {p["id"]: p["stale"] for gw in out["gateways"] for p in gw["pumps"]}
    assert stale == {
        "PMP-0001": [],
        "PMP-0002": ["no telemetry from the pump"],
        "PMP-0003": ["last reading 20 min ago"],
        "PMP-0004": ["no reading yet"],
        "PMP-0005": ["gateway offline", "programmer link down"],
    }
    # While this page is cut off from the broker, nothing it shows is current.
    out = run_model(model_page, [(topic("pumps/PMP-0001/state"), STATE)], connected=False)
    assert out["gateways"][0]["pumps"][0]["stale"] == ["this page is not connected to the broker"]


def test_model_counts_what_it_does_not_understand_and_drops_copies(model_page: Page) -> None:
    event = {"event_id": "E1", "at": NOW, "kind": "refill", "pump_id": "PMP-0001",
             "alert": None, "detail": {"before_ml": 1.5, "after_ml": 20.0}}  # fmt: skip
    out = run_model(
        model_page,
        [
            (topic("pumps/PMP-0001/state"), b"{not json"),
            (topic("pumps/PMP-0001/state"), {**STATE, "pump_id": "PMP-0002"}),  # wrong pump
            (topic("pumps/PMP-0001/alerts/battery_low"), ALERT),  # type differs from topic
            (topic("status"), b"maybe"),
            (topic("pumps/PMP-0001/whatever"), STATE),
            (topic("events"), {"kind": "refill"}),  # no event_id
            (topic("events"), [1, 2]),
            (topic("events"), event),
            (topic("events"), event),  # redelivered copy
            (topic("pumps/PMP-0001/alerts/reservoir_low"), ALERT),
            (topic("pumps/PMP-0001/alerts/reservoir_low"), b""),  # retained message deleted
        ],
    )
    assert out["accepted"] == [False] * 7 + [True, False, True, True]
    assert out["ignored"] == 7
    # What was not understood shows nothing, not even an empty gateway.
    bad_only = run_model(
        model_page,
        [
            (topic("pumps/PMP-0001/state", "bed-99"), {**STATE, "pump_id": "PMP-0002"}),
            (topic("pumps/PMP-0001/alerts/battery_low", "bed-99"), ALERT),
            (topic("info", "bed-99"), b"{not json"),
        ],
    )
    assert bad_only["ignored"] == 3 and bad_only["gateways"] == []
    assert out["events"] == ["E1"]
    assert out["attention"] == []


def test_unknown_is_shown_as_unknown_never_as_zero(model_page: Page) -> None:
    shown = model_page.evaluate(
        """() => { const M = window.PumpgwModel;
        return [M.fmt(null, 1, "mL"), M.fmt(undefined, 0, "%"), M.fmt(0, 1, "mL"),
                M.fraction(null, 20), M.fraction(5, null), M.fraction(0, 20)]; }"""
    )
    assert shown == ["—", "—", "0.0\u00a0mL", None, None, 0]


def test_an_ack_needs_a_name(model_page: Page) -> None:
    answers = model_page.evaluate(
        """() => { const M = window.PumpgwModel; const m = M.createModel("ward/7");
        const ack = (name) => M.ackCommand(m, "bed-1", "A1", name, 0);
        return [ack("  "), ack("x".repeat(65)),
                M.ackCommand(m, "bed-1", "A1", " nurse-jane ", 0), m.pendingAcks.has("A1")]; }"""
    )
    assert answers[0] == {"error": "Enter your name before acknowledging."}
    assert answers[1] == {"error": "Names are limited to 64 characters."}
    assert answers[2]["topic"] == "ward/7/bed-1/cmd/ack"
    assert AckCommand.model_validate_json(answers[2]["payload"]) == AckCommand(
        alert_id="A1", by="nurse-jane"
    )
    assert answers[3] is True


# --- the page against a real broker, fed retained payloads ------------------------------


def fresh_state(pump: str, **changes: Any) -> dict[str, Any]:
    return {**STATE, "pump_id": pump, "received_at": iso(datetime.now(UTC)), **changes}


def test_the_page_shows_pumps_unknowns_stale_data_and_alerts(
    page: Page, dashboard: DashboardServer, client: mqtt.Client
) -> None:
    retain(client, "status", b"online")
    retain(client, "info", INFO)
    retain(client, "pumps/PMP-0001/state", fresh_state("PMP-0001"))
    retain(client, "pumps/PMP-0001/alerts/battery_low", BATTERY)
    retain(client, "pumps/PMP-0001/alerts/reservoir_low", ALERT)
    hostile = '<img src=x onerror="window.pwned=1">'
    unknown = fresh_state(
        "PMP-0002", label=hostile, reservoir_ml=None, battery_pct=None,
        days_to_low_reservoir_alarm=None, flow_ml_per_day=None, stale=True,
    )  # fmt: skip
    retain(client, "pumps/PMP-0002/state", unknown)
    page.goto(dashboard.url)

    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    expect(page.locator(".pump")).to_have_count(2)
    gw = page.locator(f'.gateway[data-gateway="{GW}"]')
    expect(gw.locator(".gw-status")).to_have_text("online")
    expect(gw.locator(".gw-link")).to_have_text("programmer link up")
    expect(gw.locator(".gw-programmer")).to_have_text("ACME ITP-200 PRG00042")

    bed = card(page, "PMP-0001")
    expect(bed.locator(".label")).to_have_text("Bed 12")
    expect(bed.locator(".gauge-text")).to_have_text("Reservoir 12.4\u00a0mL of 20\u00a0mL")
    expect(bed.locator(".gauge")).to_have_attribute("aria-valuenow", "12.4")
    expect(bed.locator(".gauge")).to_have_attribute("data-level", "critical")
    expect(bed.locator(".days dd")).to_have_text("17.3\u00a0days")
    expect(bed.locator(".battery dd")).to_have_text("81\u00a0%")
    expect(bed.locator(".flow dd")).to_have_text("0.60\u00a0mL/day")
    expect(bed.locator(".seen dd")).to_have_text(re.compile(r"^\d+ s ago$"))
    expect(bed.locator(".stale-badge")).to_be_hidden()
    alerts = bed.locator(".alert")
    expect(alerts).to_have_count(2)
    expect(alerts.nth(0)).to_have_attribute("data-severity", "critical")  # critical first
    expect(alerts.nth(0).locator(".ack-button")).to_be_visible()
    expect(alerts.nth(1).locator(".ack-info")).to_have_text(
        "Acknowledged by nurse-jane at 2026-11-30 08:00:05Z"
    )
    expect(alerts.nth(1).locator(".ack-button")).to_be_hidden()
    expect(page.locator("#attention .attention-item")).to_have_count(2)
    expect(page.locator("#summary")).to_have_text("1 critical · 1 warning")

    other = card(page, "PMP-0002")
    expect(other.locator(".label")).to_have_text(hostile)  # shown as text, not run
    assert page.evaluate("window.pwned") is None
    expect(other).to_have_class(re.compile(r"\bstale\b"))
    expect(other.locator(".stale-badge")).to_be_visible()
    expect(other.locator(".stale-reason")).to_have_text("Not current: no telemetry from the pump")
    for field in (".days dd", ".battery dd", ".flow dd"):
        expect(other.locator(field)).to_have_text("—")
    expect(other.locator(".gauge-text")).to_have_text("Reservoir —\u00a0of 20\u00a0mL")

    # The gateway goes away (its Last Will): every pump of it is marked.
    retain(client, "status", b"offline")
    expect(gw.locator(".gw-status")).to_have_text("offline")
    expect(bed.locator(".stale-reason")).to_have_text("Not current: gateway offline")
    # A cleared alert leaves the card.
    retain(client, "pumps/PMP-0001/alerts/reservoir_low", {**ALERT, "state": "cleared"})
    expect(bed.locator(".alert")).to_have_count(1)
    screenshot(page, "dashboard-fed.png")


def test_acknowledge_publishes_the_contract_command_and_shows_the_answer(
    page: Page, dashboard: DashboardServer, client: mqtt.Client, ws_broker: BrokerEndpoint
) -> None:
    retain(client, "status", b"online")
    retain(client, "pumps/PMP-0001/state", fresh_state("PMP-0001"))
    retain(client, "pumps/PMP-0001/alerts/reservoir_low", ALERT)
    with Subscriber(ws_broker, f"pumpgw/{GW}/cmd/ack") as commands:
        page.goto(dashboard.url)
        alert = card(page, "PMP-0001").locator(f'.alert[data-alert-id="{ALERT["alert_id"]}"]')
        button = alert.locator(".ack-button")

        button.click()  # no name yet: nothing is sent, the name field says why
        name = page.locator("#nurse-name")
        assert name.evaluate("el => el.validationMessage") == (
            "Enter your name before acknowledging."
        )
        name.fill("nurse-jane")
        button.click()
        sent = commands.wait_for(lambda m: True)
        assert AckCommand.model_validate_json(sent.payload) == AckCommand(
            alert_id=ALERT["alert_id"], by="nurse-jane"
        )
        expect(button).to_be_disabled()

        # The gateway refuses: the page says so and the button comes back.
        refusal = {"ok": False, "command": "ack", "alert_id": ALERT["alert_id"],
                   "error": "alert already cleared"}  # fmt: skip
        publish(client, f"pumpgw/{GW}/cmd/result", refusal)
        expect(alert.locator(".ack-result")).to_have_text("Not acknowledged: alert already cleared")
        expect(page.locator("#results .result.refused")).to_have_count(1)
        expect(button).to_be_enabled()

        # Again, and this time it is taken: the answer, then the retained alert.
        button.click()
        commands.wait_for(lambda m: True, start=1)
        taken = {"ok": True, "command": "ack", "alert_id": ALERT["alert_id"]}
        publish(client, f"pumpgw/{GW}/cmd/result", taken)
        expect(alert.locator(".ack-result")).to_have_text("Gateway confirmed the acknowledgement.")
        acked = {**ALERT, "state": "acknowledged", "acknowledged_by": "nurse-jane",
                 "acknowledged_at": "2026-11-30T08:01:00Z"}  # fmt: skip
        retain(client, "pumps/PMP-0001/alerts/reservoir_low", acked)
        expect(alert).to_have_attribute("data-state", "acknowledged")
        expect(alert.locator(".ack-info")).to_have_text(
            "Acknowledged by nurse-jane at 2026-11-30 08:01:00Z"
        )
        expect(button).to_be_hidden()
        assert len(commands.messages()) == 2  # the nameless click sent nothing


def test_the_page_fits_a_tablet(
    browser: Browser, dashboard: DashboardServer, client: mqtt.Client
) -> None:
    retain(client, "status", b"online")
    retain(client, "info", INFO)
    for n in range(1, 5):
        pump = f"PMP-000{n}"
        retain(client, f"pumps/{pump}/state", fresh_state(pump, label=f"Bed {n}"))
        long_message = "Reservoir drains 25% faster than programmed: over-infusion or leak " * 2
        alert = {**ALERT, "alert_id": f"A{n}", "pump_id": pump, "message": long_message}
        retain(client, f"pumps/{pump}/alerts/reservoir_low", alert)
    with open_page(browser, TABLET, has_touch=True, is_mobile=True) as page:
        page.goto(dashboard.url)
        expect(page.locator(".pump")).to_have_count(4)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a tablet"
        for box in [b.bounding_box() for b in page.locator(".ack-button").all()]:
            assert box is not None
            assert box["height"] >= 44  # a finger's size
            assert box["x"] >= 0 and box["x"] + box["width"] <= TABLET["width"]
        card(page, "PMP-0003").locator(".ack-button").tap()  # touch works too
        expect(page.locator("#nurse-name")).to_be_focused()
        screenshot(page, "dashboard-tablet.png")


def test_losing_the_broker_marks_every_pump_stale(browser: Browser) -> None:
    with (
        LocalBroker(prefer="mosquitto", websockets=True) as broker,
        serving(broker.endpoint) as server,
        open_page(browser) as page,
    ):
        publish_retained(broker.endpoint, f"pumpgw/{GW}/pumps/PMP-0001/state", "PMP-0001")
        page.goto(server.url)
        bed = card(page, "PMP-0001")
        expect(bed).to_have_attribute("data-stale", "false")
        broker.stop()
        expect(page.locator("#connection")).not_to_have_attribute("data-state", "connected")
        expect(bed).to_have_attribute("data-stale", "true")
        expect(bed.locator(".stale-reason")).to_have_text(
            "Not current: this page is not connected to the broker"
        )


def test_no_broker_is_said_and_nothing_is_shown(page: Page, dashboard: DashboardServer) -> None:
    closed = free_loopback_port()
    page.goto(f"{dashboard.url}?broker=ws://127.0.0.1:{closed}/")
    expect(page.locator("#connection")).not_to_have_attribute("data-state", "connected")
    expect(page.locator("#connection")).to_contain_text(f"ws://127.0.0.1:{closed}/")
    expect(page.locator("#no-gateways")).to_be_visible()


# --- end to end: broker, simulated programmer, the real daemon ---------------------------


def test_end_to_end_a_low_reservoir_alert_is_acknowledged_from_the_page(
    tmp_path: Path, browser: Browser, dashboard: DashboardServer, ws_broker: BrokerEndpoint
) -> None:
    # At 8640x a simulated day takes 10 s: reservoir_low (warning) is raised on day 1
    # and escalates only on day 4, well after the ack below.
    sim_args = ["--pump", "PMP-0001=low-reservoir", "--pump", "PMP-0002=normal"]
    labels = '[pumps."PMP-0001"]\nlabel = "Bed 1"\n[pumps."PMP-0002"]\nlabel = "Bed 2"'
    with (
        open_page(browser) as page,
        simulator(tmp_path, *sim_args, "--speed", "8640") as (_, port),
        gateway(
            gateway_config(
                tmp_path, port=port, broker_port=ws_broker.port, gateway_id="ward-3", extra=labels
            )
        ) as gw,
    ):
        page.goto(dashboard.url)
        page.locator("#nurse-name").fill("nurse-jane")
        gw_status = page.locator('.gateway[data-gateway="ward-3"] .gw-status')
        expect(gw_status).to_have_text("online")
        expect(page.locator(".pump")).to_have_count(2)
        expect(card(page, "PMP-0001").locator(".label")).to_have_text("Bed 1")
        low = card(page, "PMP-0001").locator('.alert[data-type="reservoir_low"]')
        expect(low).to_be_visible()
        alert_id = low.get_attribute("data-alert-id")
        assert alert_id
        low.locator(".ack-button").click()
        expect(low.locator(".ack-result")).to_have_text("Gateway confirmed the acknowledgement.")
        expect(low).to_have_attribute("data-state", "acknowledged")
        expect(low.locator(".ack-info")).to_contain_text("Acknowledged by nurse-jane")
        acked_event = page.locator('#timeline .event[data-kind="alert_acknowledged"]')
        expect(acked_event).to_have_count(1)
        screenshot(page, "dashboard-end-to-end.png")

        # What a dashboard connecting now gets from the broker.
        topic = "pumpgw/ward-3/pumps/PMP-0001/alerts/reservoir_low"
        with Subscriber(ws_broker, topic) as late:
            retained = Alert.model_validate_json(late.wait_for(lambda m: True).payload)
        assert retained.alert_id == alert_id
        assert retained.state == "acknowledged"
        assert retained.acknowledged_by == "nurse-jane"
        assert gw.proc.poll() is None, gw.log()


def test_the_demo_serves_the_dashboard(tmp_path: Path, browser: Browser) -> None:
    demo = Process(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", "90", "--dashboard-port", "0"],
        tmp_path / "demo.log",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.proc.stdout is not None
        url = next((ln.split()[1] for ln in demo.proc.stdout if ln.startswith("dashboard: ")), "")
        assert url, demo.log()
        with open_page(browser) as page:
            page.goto(url)
            expect(page.locator(".pump")).to_have_count(5)
            stall = card(page, "PMP-0003").locator('.alert[data-type="pump_fault"]')
            expect(stall).to_have_attribute("data-severity", "critical")
            low = card(page, "PMP-0001").locator('.alert[data-type="reservoir_low"]')
            expect(low).to_be_visible()
            first = page.locator("#attention .attention-item").first
            expect(first).to_have_attribute("data-severity", "critical")
            shot = screenshot(page, "dashboard-demo.png")
        if os.environ.get("PUMPGW_UPDATE_DOCS") == "1":
            DOCS_SCREENSHOT.write_bytes(shot.read_bytes())
    finally:
        assert demo.stop() == 0, demo.log()


def test_the_exported_page_works_from_mosquittos_http_dir(tmp_path: Path, browser: Browser) -> None:
    """The broker alone: mosquitto serves the page on its WebSockets listener, and
    the page, with no broker configured, connects back to where it came from."""
    www = tmp_path / "www"
    export(www, DashboardSettings(broker_url="ws://unused.invalid/"))
    (www / "config.json").unlink()  # the default: the broker that served the page
    with LocalBroker(prefer="mosquitto", http_dir=www) as broker, open_page(browser) as page:
        publish_retained(broker.endpoint, "pumpgw/bed-9/pumps/PMP-0009/state", "PMP-0009")
        page.goto(f"http://127.0.0.1:{broker.endpoint.ws_port}/")
        expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
        expect(card(page, "PMP-0009")).to_be_visible()


def test_the_amqtt_broker_speaks_websockets_too(browser: Browser) -> None:
    with (
        LocalBroker(prefer="amqtt", websockets=True) as broker,
        serving(broker.endpoint) as server,
        open_page(browser) as page,
    ):
        publish_retained(broker.endpoint, "pumpgw/bed-8/pumps/PMP-0008/state", "PMP-0008")
        page.goto(server.url)
        expect(card(page, "PMP-0008")).to_be_visible()


def publish_retained(endpoint: BrokerEndpoint, topic: str, pump: str) -> None:
    """A fresh pump state, retained, from a client of its own."""
    c = connect_client(endpoint)
    try:
        publish(c, topic, fresh_state(pump), retain=True)
    finally:
        close_client(c)
