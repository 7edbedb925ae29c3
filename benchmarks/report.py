"""The results table (Markdown, so it can go into benchmarks/README.md as is)."""

from __future__ import annotations

from typing import Any

NA = "-"


def _ms(stats: dict[str, Any] | None) -> str:
    if not stats or not stats.get("n"):
        return NA
    return f"{stats['p50_ms']:.2f} / {stats['p99_ms']:.2f} / {stats['max_ms']:.2f} ms"


def _s_stats(stats: dict[str, Any] | None) -> str:
    if not stats or not stats.get("n"):
        return NA
    p50, p99, top = (stats[k] / 1000 for k in ("p50_ms", "p99_ms", "max_ms"))
    return f"{p50:.1f} / {p99:.1f} / {top:.1f} s"


def _rate(value: float | None) -> str:
    return NA if value is None else f"{value:,.0f}/s"


def _verdict(met: bool | None) -> str:
    return NA if met is None else ("**met**" if met else "**missed**")


def _goal(result: dict[str, Any], index: int) -> tuple[str, str]:
    goals = result.get("goals") or []
    if index >= len(goals):
        return NA, NA
    goal = goals[index]
    return goal["goal"], _verdict(goal["met"])


Row = tuple[str, str, str, str, str]


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []

    def not_run(name: str, result: dict[str, Any]) -> bool:
        if "skipped" in result:
            out.append((name, "skipped", result["skipped"], NA, NA))
            return True
        if "error" in result:
            out.append((name, "failed", result["error"].splitlines()[0][:160], NA, NA))
            return True
        return False

    lat = results.get("latency")
    if lat is not None and not not_run("latency", lat):
        gw, relay, ratios = lat["gateway"], lat["raw_relay"], lat["ratios"]
        base = f"raw relay {_ms(relay['frame'])}"
        out.append(
            (
                "latency: pty -> subscriber, `state` (p50 / p99 / max)",
                _ms(gw["state"]),
                f"{base}; p99 ratio {ratios['state_p99_over_relay_p99']}x",
                NA,
                NA,
            )
        )
        g0, v0 = _goal(lat, 0)
        g1, v1 = _goal(lat, 1)
        out.append(
            (
                "latency: pty -> subscriber, alert transition (p50 / p99 / max)",
                _ms(gw["alert"]),
                f"{base}; p99 ratio {ratios['alert_p99_over_relay_p99']}x",
                f"{g0}; {g1}",
                f"{v0}; {v1}",
            )
        )
        out.append(
            (
                "latency: samples",
                f"{gw['alert']['n']} per figure, {gw['timeouts']} timed out",
                f"{gw['alert_transitions_per_frame']} alert transitions per frame",
                NA,
                NA,
            )
        )
    peer = results.get("peer")
    if peer is not None and not not_run("peer: mqtt-io", peer):
        fast = peer["fast"]
        gw_p99 = (lat or {}).get("gateway", {}).get("alert", {}).get("p99_ms")
        ratio = (
            f"gateway alert p99 / mqtt-io p99 = {gw_p99 / fast['frame']['p99_ms']:.2f}"
            if gw_p99 and fast["frame"].get("p99_ms")
            else NA
        )
        out.append(
            (
                f"peer: {peer['peer']}, read_interval 0.01 s (p50 / p99 / max)",
                _ms(fast["frame"]),
                ratio,
                NA,
                NA,
            )
        )
        paced = fast["line_paced"]
        out.append(
            (
                "peer: frames at 115200 baud, read_interval 0.01 s",
                f"{paced['frames_split_across_messages']} of {paced['frames_written']} frames "
                f"split across messages",
                f"{paced['messages']} QoS 0 messages, {paced['messages_not_whole_frames']} "
                "not whole frames; nothing checked",
                NA,
                NA,
            )
        )
        default = peer["default"]
        if "skipped" in default:
            out.append(("peer: default read_interval 60 s", "skipped", default["skipped"], NA, NA))
        else:
            out.append(
                (
                    "peer: default read_interval 60 s (p50 / p99 / max)",
                    _s_stats(default["frame"]),
                    f"one frame every {default['one_frame_every_s']:g} s: "
                    f"{default['frames_received']} of {default['frames_written']} frames in "
                    f"{default['stream']['messages']} messages (up to "
                    f"{default['stream']['max_frames_in_one_message']} frames in one); a poll "
                    f"takes <= {default['max_bytes_per_poll']} bytes",
                    NA,
                    NA,
                )
            )
    tp = results.get("throughput")
    if tp is not None and not not_run("throughput", tp):
        for mix in ("steady", "alerts"):
            label = "steady readings" if mix == "steady" else "every reading an alert"
            out.append(
                (
                    f"throughput, {label}: codec / engine / in-process pipeline",
                    " / ".join(
                        _rate(tp[part][mix]["readings_per_s"])
                        for part in ("codec", "engine", "pipeline_in_process")
                    ),
                    NA,
                    NA,
                    NA,
                )
            )
            d = tp["daemon"][mix]
            goal, verdict = _goal(tp, 0) if mix == "steady" else ("worst case, for scale", NA)
            out.append(
                (
                    f"throughput, {label}: real daemon end to end",
                    _rate(d["readings_per_s"]),
                    f"{tp['ratios'][f'daemon_{mix}_over_115200_line']}x a 115200-baud line "
                    f"({tp['line_115200_frames_per_s']:.0f}/s); daemon CPU "
                    f"{d['daemon_cpu']['cpu_pct_of_core']:.0f}%",
                    goal,
                    verdict,
                )
            )
        goal, verdict = _goal(tp, 1)
        steady, alerts = tp["daemon"]["steady"], tp["daemon"]["alerts"]
        out.append(
            (
                "throughput: frames the daemon lost / discarded under the blast (steady; alerts)",
                f"{steady['frames_lost']} / {steady['frames_discarded']}; "
                f"{alerts['frames_lost']} / {alerts['frames_discarded']}",
                "the daemon's own counters (seq gaps, bad CRC); the same blast through the "
                f"raw relay: {tp['raw_relay']['lost']} of {tp['raw_relay']['frames']} lost, "
                f"{_rate(tp['raw_relay']['frames_per_s'])}",
                goal,
                verdict,
            )
        )
        out.append(("throughput: one outbox commit (fsync)", _ms(tp["outbox_commit"]), NA, NA, NA))
        for mix, cost in tp.get("reading_cost_us", {}).items():
            label = "steady reading" if mix == "steady" else "alert reading"
            out.append(
                (
                    f"main-thread cost of one {label}, committed alone",
                    f"{cost['total_us']:.0f} us",
                    f"decode {cost['decode']:.0f} + engine {cost['engine']:.0f} + payloads "
                    f"{cost['payloads']:.0f} + snapshot {cost['snapshot']:.0f} + outbox commit "
                    f"{cost['outbox_commit']:.0f} us",
                    NA,
                    NA,
                )
            )
    rec = results.get("recovery")
    if rec is not None and not not_run("recovery", rec):
        goal, verdict = _goal(rec, 0)
        out.append(
            (
                f"recovery: {rec['messages']:,} queued alert/events, broker back -> all PUBACKed",
                f"{rec['total_s']:.2f} s",
                f"reconnect (paho backoff) {rec['reconnect_s']} s + drain {rec['drain_s']} s "
                f"({_rate(rec['drain_messages_per_s'])}); outage {rec['outage_s']:g} s",
                goal,
                verdict,
            )
        )
    fp = results.get("footprint")
    if fp is not None and not not_run("footprint", fp):
        g_rss, v_rss = _goal(fp, 0)
        g_cpu, v_cpu = _goal(fp, 1)
        g_rdy, v_rdy = _goal(fp, 2)
        out.append(
            (
                f"footprint: start -> READY ({fp['ready_signal']}), median / max",
                f"{fp['ready_median_ms']:.0f} / {fp['ready_max_ms']:.0f} ms",
                f"{len(fp['starts'])} starts",
                g_rdy,
                v_rdy,
            )
        )
        idle, load = fp["idle"], fp["load"]
        out.append(
            (
                "footprint: idle CPU (1 pump, 60 s interval)",
                f"{idle['cpu_pct_of_core']:.3f}% of a core",
                f"{idle['cpu_s']} CPU s in {idle['seconds']:g} s",
                g_cpu,
                v_cpu,
            )
        )
        out.append(
            (
                "footprint: RSS idle / under load (peak)",
                f"{idle['rss_mb']} / {load['peak_rss_mb']} MB",
                f"load {load['readings_per_s']:g} readings/s: {load['cpu_pct_of_core']:.1f}% "
                "of a core",
                g_rss,
                v_rss,
            )
        )
    fl = results.get("fleet")
    if fl is not None and not not_run("fleet", fl):
        g_lost, v_lost = _goal(fl, 0)
        g_mis, v_mis = _goal(fl, 1)
        out.append(
            (
                f"fleet: {fl['gateways']} gateways x 4 pumps, alert transitions",
                f"{fl['alert_transitions_received']} of {fl['alert_transitions_logged']} "
                f"received; {fl['lost']} lost, {fl['misattributed']} misattributed",
                f"{fl['duplicates']} duplicates; {fl['missing_but_still_in_outbox']} still in "
                "an outbox at stop",
                f"{g_lost}; {g_mis}",
                f"{v_lost}; {v_mis}",
            )
        )
        out.append(
            (
                "fleet: messages/s (dashboard; broker packets in / out)",
                _rate(fl["dashboard_messages_per_s"]),
                f"{_rate(fl['broker_packets_in_per_s'])} / "
                f"{_rate(fl['broker_packets_out_per_s'])}; "
                f"{fl['readings_per_s_offered']:.0f} readings/s offered",
                NA,
                NA,
            )
        )
        out.append(
            (
                "fleet: dashboard lag in the window, event `at` -> received (p50 / p99 / max)",
                _ms(fl["lag_in_window"]),
                f"{fl['alert_transitions_in_window']} transitions in {fl['window_s']:.0f} s; "
                f"whole run incl. start-up: {_ms(fl['lag'])}",
                NA,
                NA,
            )
        )
        out.append(
            (
                "fleet: resources during the window",
                f"{fl['start_to_all_links_up_s']:g} s to start all",
                f"daemons' CPU sum {fl['daemon_cpu_pct_of_core']['sum']}% of a core "
                f"(mosquitto {fl['broker_cpu_pct_of_core']}%), RSS "
                f"{fl['daemon_rss_mb']['mean']} MB each",
                NA,
                NA,
            )
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    header = ("figure", "measured", "baseline, ratio, context", "goal", "verdict")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows(results):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)
