"""The dashboard's files and how they are handed out, without a browser:
``pumpgw dashboard`` serving them (a real process on a free port), ``--export``,
bad options, and the vendored MQTT.js being the release it says it is.
The page itself is tested in a real chromium in test_dashboard.py.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest
from processes import Process, run_cli

from gateway.broker import free_loopback_port
from gateway.dashboard.server import STATIC_DIR, DashboardSettings

VENDORED_MQTT_JS = "f3cbeae580d3010048938ee370f2db0c15d16e6f7fc147cb32ae5510e571b387"
PAGE_FILES = {"index.html", "app.js", "model.js", "style.css", "vendor/mqtt.min.js"}


def test_the_vendored_mqtt_js_is_the_release_named_in_its_readme() -> None:
    data = (STATIC_DIR / "vendor" / "mqtt.min.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == VENDORED_MQTT_JS
    readme = (STATIC_DIR / "vendor" / "README.md").read_text()
    assert VENDORED_MQTT_JS in readme and "5.16.0" in readme
    assert (STATIC_DIR / "vendor" / "mqtt.LICENSE.md").read_text().startswith("The MIT License")


def test_the_page_loads_only_its_own_files() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    for name in ("vendor/mqtt.min.js", "model.js", "app.js", "style.css"):
        assert f'"{name}"' in html
    assert "http://" not in html and "https://" not in html  # no CDN, works offline
    assert "Content-Security-Policy" in html
    # Payloads are written as text, never parsed as HTML.
    for script in ("app.js", "model.js"):
        assert "innerHTML" not in (STATIC_DIR / script).read_text()


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def test_pumpgw_dashboard_serves_the_page_and_its_settings(tmp_path: Path) -> None:
    port = free_loopback_port()
    server = Process(
        [
            sys.executable, "-m", "gateway.cli", "dashboard", "--port", str(port),
            "--broker-url", "wss://broker.clinic.example:8081/mqtt", "--prefix", "ward/7",
            "--username", "nurses", "--stale-after-s", "300",
        ],
        tmp_path / "dashboard.log",
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert server.proc.stdout is not None
        line = server.proc.stdout.readline()
        assert line.startswith(f"dashboard: http://127.0.0.1:{port}/"), server.log()
        status, kind, body = get(port, "/config.json")
        assert (status, kind) == (200, "application/json")
        assert json.loads(body) == {
            "broker_url": "wss://broker.clinic.example:8081/mqtt",
            "prefix": "ward/7",
            "username": "nurses",
            "stale_after_s": 300.0,
        }
        status, kind, body = get(port, "/")
        assert status == 200 and kind.startswith("text/html") and b"clinic dashboard" in body
        status, kind, _ = get(port, "/app.js")
        assert status == 200 and kind.startswith("text/javascript")
        assert get(port, "/vendor/")[0] == 404  # no directory listings
        assert get(port, "/../pyproject.toml")[0] == 404
    finally:
        assert server.stop() == 0


def test_export_writes_the_page_and_its_settings(tmp_path: Path) -> None:
    target = tmp_path / "www"
    done = run_cli("dashboard", "--export", str(target), "--broker-url", "ws://10.0.0.5:9001/")
    assert done.returncode == 0, done.stderr
    written = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert written >= PAGE_FILES | {"config.json"}
    settings = DashboardSettings.model_validate_json((target / "config.json").read_text())
    assert settings.broker_url == "ws://10.0.0.5:9001/" and settings.prefix == "pumpgw"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker-url", "http://broker:9001/"], "--broker-url: String should match pattern"),
        (["--prefix", "ward/+"], "--prefix: String should match pattern"),
        (["--stale-after-s", "1"], "--stale-after-s: Input should be greater than or equal"),
    ],
)
def test_bad_options_are_one_line_each(args: list[str], message: str) -> None:
    done = run_cli("dashboard", "--port", "0", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pumpgw dashboard: {message}"), done.stderr


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    port = free_loopback_port()
    first = Process(
        [sys.executable, "-m", "gateway.cli", "dashboard", "--port", str(port)],
        tmp_path / "first.log",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.proc.stdout is not None and first.proc.stdout.readline()
        done = run_cli("dashboard", "--port", str(port))
        assert done.returncode == 1
        assert done.stderr.strip() == (
            f"pumpgw dashboard: cannot listen on 127.0.0.1:{port}: Address already in use"
        )
    finally:
        first.stop()
