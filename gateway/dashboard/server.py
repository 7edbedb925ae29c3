"""Serve or export the dashboard's static files and the page's ``config.json``.

The server is a plain file server (GET and HEAD only, no directory listings);
the page's data comes straight from the broker, never through it.
"""

from __future__ import annotations

import logging
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from drivers.logfmt import log_event
from gateway.config import TOPIC_PATH_PATTERN

log = logging.getLogger("pumpgw.dashboard")

STATIC_DIR = Path(__file__).with_name("static")
CONFIG_NAME = "config.json"
DEFAULT_PORT = 8080


class DashboardSettings(BaseModel):
    """What the page reads from ``config.json`` (the URL's query can override each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_url: str = Field(
        pattern=r"^wss?://[^\s/?#]+(/[^\s]*)?$",
        description="the broker's MQTT-over-WebSockets listener, ws:// or wss://",
    )
    prefix: str = Field(default="pumpgw", max_length=128, pattern=TOPIC_PATH_PATTERN)
    username: str | None = Field(default=None, min_length=1, max_length=256)
    stale_after_s: float = Field(
        default=600, ge=10, le=86400, description="mark a pump stale when its last reading is older"
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True, indent=2).encode()


def export(target: Path, settings: DashboardSettings) -> list[Path]:
    """Copy the page and its ``config.json`` into ``target``; returns what was written."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(STATIC_DIR, target, dirs_exist_ok=True)
    config = target / CONFIG_NAME
    config.write_bytes(settings.to_json())
    return sorted(p for p in target.rglob("*") if p.is_file())


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012 - the base class declares it as a plain dict
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".json": "application/json",
        ".md": "text/plain; charset=utf-8",
        "": "application/octet-stream",
    }

    def __init__(self, *args: Any, config_json: bytes, **kwargs: Any) -> None:
        self._config_json = config_json
        super().__init__(*args, directory=str(STATIC_DIR), **kwargs)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == f"/{CONFIG_NAME}":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self._config_json)))
            self.end_headers()
            self.wfile.write(self._config_json)
            return
        super().do_GET()

    def list_directory(self, path: str | Any) -> None:
        self.send_error(404, "Not found")
        return None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard_request %s", format % args)


class DashboardServer:
    """The page and ``config.json`` over HTTP, on a thread of its own (``start``)
    or in the foreground (``serve_forever``)."""

    def __init__(self, settings: DashboardSettings, host: str, port: int) -> None:
        handler = partial(_Handler, config_json=settings.to_json())
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.settings = settings

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        shown = host if isinstance(host, str) else host.decode()
        if shown in ("0.0.0.0", "::"):
            shown = "localhost"
        return f"http://{shown}:{port}/"

    def start(self) -> str:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="dashboard-http", daemon=True
        )
        self._thread.start()
        log_event(log, "dashboard_serving", url=self.url, broker=self.settings.broker_url)
        return self.url

    def serve_forever(self) -> None:
        log_event(log, "dashboard_serving", url=self.url, broker=self.settings.broker_url)
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
