"""Smoke test of benchmarks/: each benchmark at a tiny size, so none can rot.

Runs ``python -m benchmarks --quick --only NAME`` as a real process tree (as
the README says to run it) and checks that it produced numbers and its JSON.
No timing is asserted: how fast this machine is, is not a test result.
mqtt-io (the peer) is not installed here; without its venv that benchmark
must say it was skipped, and why.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import find_mosquitto

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300


def run_benchmark(name: str, tmp_path: Path) -> dict[str, Any]:
    if find_mosquitto() is None:
        pytest.fail(
            "mosquitto is not installed; the benchmarks need a real broker. "
            "Run `apt-get install -y mosquitto`.",
            pytrace=False,
        )
    out = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--only",
            name,
            "--peer-install",
            "no",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    assert "| figure | measured |" in done.stdout
    document = json.loads(out.read_text())
    assert document["meta"]["machine"]["nproc"] >= 1
    result = document["results"][name]
    assert "error" not in result, result
    for goal in result.get("goals", []):
        assert isinstance(goal["met"], bool), goal
    return result


def number(value: Any) -> float:
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    assert math.isfinite(value), value
    return float(value)


def stats(summary: dict[str, Any]) -> None:
    assert summary["n"] > 0
    for key in ("p50_ms", "p99_ms", "max_ms"):
        number(summary[key])


def test_latency(tmp_path: Path) -> None:
    result = run_benchmark("latency", tmp_path)
    stats(result["gateway"]["state"])
    stats(result["gateway"]["alert"])
    stats(result["raw_relay"]["frame"])
    assert result["gateway"]["alert_transitions_per_frame"] == 1.0
    number(result["ratios"]["alert_p99_over_relay_p99"])


def test_throughput(tmp_path: Path) -> None:
    result = run_benchmark("throughput", tmp_path)
    for part in ("codec", "engine", "pipeline_in_process", "daemon"):
        for mix in ("steady", "alerts"):
            assert number(result[part][mix]["readings_per_s"]) > 0
    assert result["daemon"]["alerts"]["alert_transitions"] == result["daemon"]["alerts"]["readings"]
    stats(result["outbox_commit"])
    for mix in ("steady", "alerts"):
        assert isinstance(result["daemon"][mix]["frames_lost"], int)
    assert result["raw_relay"]["received"] > 0


def test_recovery(tmp_path: Path) -> None:
    result = run_benchmark("recovery", tmp_path)
    assert result["pubacks"] >= result["messages"]
    for key in ("reconnect_s", "drain_s", "total_s"):
        number(result[key])


def test_footprint(tmp_path: Path) -> None:
    result = run_benchmark("footprint", tmp_path)
    number(result["ready_median_ms"])
    number(result["idle"]["cpu_pct_of_core"])
    assert number(result["idle"]["rss_mb"]) > 0
    assert number(result["load"]["peak_rss_mb"]) > 0


def test_peer(tmp_path: Path) -> None:
    result = run_benchmark("peer", tmp_path)
    if "skipped" in result:
        assert "mqtt-io" in result["skipped"]
        return
    stats(result["fast"]["frame"])
    assert result["fast"]["line_paced"]["frames"] > 0


def test_fleet(tmp_path: Path) -> None:
    result = run_benchmark("fleet", tmp_path)
    assert result["gateways"] == 2
    assert result["alert_transitions_logged"] > 0
    for key in ("lost", "misattributed", "duplicates"):
        assert isinstance(result[key], int)
    number(result["dashboard_messages_per_s"])
    stats(result["lag"])
