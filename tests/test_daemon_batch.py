"""The daemon's main loop takes bursts in batches and never drops an input."""

from __future__ import annotations

from pathlib import Path

from gateway.config import parse_config
from gateway.daemon import BATCH, Daemon, DaemonInput, StopRequested
from gateway.mqtt_link import PublishAcked


def make_daemon(tmp_path: Path) -> tuple[Daemon, list[DaemonInput]]:
    config = parse_config(
        {
            "gateway": {"id": "batch", "state_dir": str(tmp_path)},
            "serial": {"port": str(tmp_path / "no-such-port")},
            "mqtt": {"host": "127.0.0.1", "port": 1},
        }
    )
    daemon = Daemon(config, None)  # nothing started: only the loop's batching is used
    seen: list[DaemonInput] = []
    daemon._handle = seen.append  # type: ignore[method-assign]
    return daemon, seen


def test_a_burst_larger_than_a_batch_loses_no_input(tmp_path: Path) -> None:
    daemon, seen = make_daemon(tmp_path)
    burst = [PublishAcked(mid) for mid in range(2 * BATCH + 44)]
    for item in burst:
        daemon.inbox.put(item)
    for _ in range(3):  # 2 x BATCH + 44 inputs: three batches
        assert daemon._handle_batch() is None
    assert seen == burst


def test_a_stop_inside_a_burst_is_returned_after_what_came_before(tmp_path: Path) -> None:
    daemon, seen = make_daemon(tmp_path)
    for mid in range(5):
        daemon.inbox.put(PublishAcked(mid))
    daemon.inbox.put(StopRequested("SIGTERM"))
    assert daemon._handle_batch() == StopRequested("SIGTERM")
    assert seen == [PublishAcked(mid) for mid in range(5)]
