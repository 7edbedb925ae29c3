// The dashboard's state: everything seen on the broker, and what the page
// shows derived from it. Pure: no DOM, no MQTT, no clock (callers pass `nowMs`),
// so the browser tests can drive it with made-up messages and times.
// A classic script (no ES modules): it must run when served by mosquitto's
// http_dir, which sends no Content-Type; it defines window.PumpgwModel.
//
// Topics (docs/mqtt.md): {prefix}/{gateway}/status | info | events | cmd/result
// and {prefix}/{gateway}/pumps/{pump}/state | alerts/{type}.

(function () {
  "use strict";

  const GATEWAY_PUMP = "_gateway"; // the {pump} of gateway-wide alerts (link_lost)
  const SEVERITY_RANK = { critical: 2, warning: 1 };
  const MAX_EVENTS = 200; // kept to drop redelivered copies; the page shows the newest 100
  const MAX_RESULTS = 5; // command answers shown

  function subscriptions(prefix) {
    const p = `${prefix}/+`;
    return [
      `${p}/status`,
      `${p}/info`,
      `${p}/events`,
      `${p}/cmd/result`,
      `${p}/pumps/+/state`,
      `${p}/pumps/+/alerts/+`,
    ];
  }

  function createModel(prefix) {
    return {
      prefix,
      gateways: new Map(), // id -> gateway (sorted on read)
      events: [], // newest first, at most MAX_EVENTS
      eventIds: new Set(),
      results: [], // command answers, newest first
      pendingAcks: new Map(), // alert_id -> {gateway, by, sentAt}
      ackOutcome: new Map(), // alert_id -> last cmd/result for it
      ignored: 0, // messages that were not understood (bad JSON, unknown topic)
      connected: false, // whether this page is connected to the broker now
    };
  }

  // {gateway, kind, pump, alertType} or null when the topic is not ours.
  function parseTopic(prefix, topic) {
    if (!topic.startsWith(`${prefix}/`)) return null;
    const parts = topic.slice(prefix.length + 1).split("/");
    const [gateway, kind] = parts;
    if (!gateway) return null;
    if (parts.length === 2 && ["status", "info", "events"].includes(kind)) {
      return { gateway, kind };
    }
    if (parts.length === 3 && kind === "cmd" && parts[2] === "result") {
      return { gateway, kind: "result" };
    }
    if (kind === "pumps" && parts.length === 4 && parts[3] === "state") {
      return { gateway, kind: "state", pump: parts[2] };
    }
    if (kind === "pumps" && parts.length === 5 && parts[3] === "alerts") {
      return { gateway, kind: "alert", pump: parts[2], alertType: parts[4] };
    }
    return null;
  }

  function gatewayOf(model, id) {
    let gw = model.gateways.get(id);
    if (!gw) {
      gw = { id, status: null, info: null, pumps: new Map(), alerts: new Map() };
      model.gateways.set(id, gw);
    }
    return gw;
  }

  function pumpOf(gw, id) {
    let pump = gw.pumps.get(id);
    if (!pump) {
      pump = { id, state: null, alerts: new Map() };
      gw.pumps.set(id, pump);
    }
    return pump;
  }

  function parseJson(text) {
    try {
      const value = JSON.parse(text);
      return value !== null && typeof value === "object" && !Array.isArray(value) ? value : null;
    } catch {
      return null;
    }
  }

  // Take one MQTT message. Returns false (and counts it) when it is not understood;
  // a bad message never throws and never changes what is shown.
  function applyMessage(model, topic, text, nowMs) {
    const where = parseTopic(model.prefix, topic);
    if (where === null) return ignore(model);
    if (where.kind === "status") {
      if (text !== "online" && text !== "offline") return ignore(model);
      gatewayOf(model, where.gateway).status = text;
      return true;
    }
    if (where.kind === "alert" && text === "") {
      // an empty retained message deletes the alert (someone cleaned the broker)
      const gw = model.gateways.get(where.gateway);
      const table = where.pump === GATEWAY_PUMP ? gw?.alerts : gw?.pumps.get(where.pump)?.alerts;
      table?.delete(where.alertType);
      return true;
    }
    const payload = parseJson(text);
    if (payload === null) return ignore(model);
    // A gateway appears only with a message that was understood.
    switch (where.kind) {
      case "info":
        gatewayOf(model, where.gateway).info = payload;
        return true;
      case "state":
        if (payload.pump_id !== where.pump) return ignore(model);
        pumpOf(gatewayOf(model, where.gateway), where.pump).state = payload;
        return true;
      case "alert": {
        if (payload.pump_id !== where.pump || payload.type !== where.alertType) {
          return ignore(model);
        }
        const gw = gatewayOf(model, where.gateway);
        if (where.pump === GATEWAY_PUMP) gw.alerts.set(payload.type, payload);
        else pumpOf(gw, where.pump).alerts.set(payload.type, payload);
        return true;
      }
      case "events":
        return addEvent(model, where.gateway, payload);
      case "result":
        return addResult(model, where.gateway, payload, nowMs);
    }
    return ignore(model);
  }

  function ignore(model) {
    model.ignored += 1;
    return false;
  }

  function addEvent(model, gateway, event) {
    if (typeof event.event_id !== "string" || typeof event.kind !== "string") {
      return ignore(model);
    }
    if (model.eventIds.has(event.event_id)) return false; // a redelivered copy
    model.eventIds.add(event.event_id);
    model.events.unshift({ gateway, ...event });
    for (const dropped of model.events.splice(MAX_EVENTS)) model.eventIds.delete(dropped.event_id);
    return true;
  }

  function addResult(model, gateway, result, nowMs) {
    if (typeof result.ok !== "boolean") return ignore(model);
    recordResult(model, { gateway, ...result, receivedAt: nowMs });
    return true;
  }

  // A command's answer: newest first in the list, and the outcome of its alert.
  function recordResult(model, entry) {
    model.results.unshift(entry);
    model.results.splice(MAX_RESULTS);
    if (typeof entry.alert_id === "string") {
      model.pendingAcks.delete(entry.alert_id);
      model.ackOutcome.set(entry.alert_id, entry);
    }
  }

  // The cmd/ack message for an alert, and the note that it is on its way.
  function ackCommand(model, gateway, alertId, by, nowMs) {
    const name = by.trim();
    if (!name) return { error: "Enter your name before acknowledging." };
    if (name.length > 64) return { error: "Names are limited to 64 characters." };
    model.pendingAcks.set(alertId, { gateway, by: name, sentAt: nowMs });
    model.ackOutcome.delete(alertId);
    return {
      topic: `${model.prefix}/${gateway}/cmd/ack`,
      payload: JSON.stringify({ alert_id: alertId, by: name }),
    };
  }

  function ackFailed(model, alertId, error, nowMs) {
    const gateway = model.pendingAcks.get(alertId)?.gateway ?? null;
    recordResult(model, { gateway, ok: false, command: "ack", alert_id: alertId, error, receivedAt: nowMs });
  }

  // --- what the page shows ---------------------------------------------------------

  function isOpen(alert) {
    return alert.state !== "cleared";
  }

  // Critical first, then the ones nobody acknowledged, then the oldest.
  function compareAlerts(a, b) {
    return (
      (SEVERITY_RANK[b.severity] ?? 0) - (SEVERITY_RANK[a.severity] ?? 0) ||
      Number(a.state === "acknowledged") - Number(b.state === "acknowledged") ||
      String(a.raised_at).localeCompare(String(b.raised_at))
    );
  }

  function sortAlerts(alerts) {
    return [...alerts].filter(isOpen).sort(compareAlerts);
  }

  function gateways(model) {
    return [...model.gateways.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  function pumps(gw) {
    const label = (p) => p.state?.label ?? p.id;
    return [...gw.pumps.values()].sort(
      (a, b) => label(a).localeCompare(label(b), undefined, { numeric: true }) || a.id.localeCompare(b.id),
    );
  }

  // Every open alert of every gateway, for the "needs attention" list.
  function attention(model) {
    const all = [];
    for (const gw of model.gateways.values()) {
      for (const alert of gw.alerts.values()) all.push({ gateway: gw.id, label: gw.id, alert });
      for (const pump of gw.pumps.values()) {
        const label = pump.state?.label ?? pump.id;
        for (const alert of pump.alerts.values()) all.push({ gateway: gw.id, label, alert });
      }
    }
    return all.filter((x) => isOpen(x.alert)).sort((x, y) => compareAlerts(x.alert, y.alert));
  }

  // Why a pump's figures may be out of date (empty: they are current).
  function staleReasons(model, gw, pump, nowMs, staleAfterMs) {
    const reasons = [];
    if (!model.connected) reasons.push("this page is not connected to the broker");
    if (gw.status === "offline") reasons.push("gateway offline");
    if (gw.info?.link === "down") reasons.push("programmer link down");
    const state = pump.state;
    if (state === null) {
      reasons.push("no reading yet");
      return reasons;
    }
    if (state.stale) reasons.push("no telemetry from the pump");
    const seen = Date.parse(state.received_at);
    if (Number.isFinite(seen) && nowMs - seen > staleAfterMs) {
      reasons.push(`last reading ${ago(seen, nowMs)}`);
    }
    return reasons;
  }

  function gaugeLevel(pump) {
    const alert = pump.alerts.get("reservoir_low");
    return alert && isOpen(alert) ? alert.severity : "ok";
  }

  function fraction(value, capacity) {
    if (value == null || capacity == null || !(capacity > 0)) return null;
    return Math.max(0, Math.min(1, value / capacity));
  }

  // --- formatting: unknown is shown as unknown, never as 0 --------------------------

  const UNKNOWN = "—";

  function fmt(value, digits, unit = "") {
    if (value == null || !Number.isFinite(value)) return UNKNOWN;
    return `${value.toFixed(digits)}${unit ? `\u00a0${unit}` : ""}`;
  }

  function ago(thenMs, nowMs) {
    if (!Number.isFinite(thenMs)) return UNKNOWN;
    const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 172800) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function shortTime(iso) {
    const t = Date.parse(iso);
    if (!Number.isFinite(t)) return UNKNOWN;
    return new Date(t).toISOString().replace("T", " ").slice(0, 19) + "Z";
  }

  function eventText(event) {
    const a = event.alert;
    if (a) return `${a.type} ${a.severity}: ${a.message}${a.acknowledged_by ? ` (by ${a.acknowledged_by})` : ""}`;
    const d = event.detail;
    if (!d) return event.kind.replaceAll("_", " ");
    const facts = Object.entries(d)
      .map(([k, v]) => `${k} ${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`)
      .join(", ");
    return `${event.kind.replaceAll("_", " ")}: ${facts}`;
  }

  globalThis.PumpgwModel = Object.freeze({
    GATEWAY_PUMP,
    MAX_EVENTS,
    MAX_RESULTS,
    subscriptions,
    createModel,
    parseTopic,
    applyMessage,
    ackCommand,
    ackFailed,
    isOpen,
    sortAlerts,
    gateways,
    pumps,
    attention,
    staleReasons,
    gaugeLevel,
    fraction,
    UNKNOWN,
    fmt,
    ago,
    shortTime,
    eventText,
  });
})();
