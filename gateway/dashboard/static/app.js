// The page: connects to the broker over MQTT over WebSockets, feeds the pure
// model (model.js) and keeps the DOM in step with it. Every value from the
// broker is written with textContent, never parsed as HTML. A classic script
// after vendor/mqtt.min.js (global `mqtt`) and model.js (global `PumpgwModel`).

(function () {
  "use strict";
  const M = globalThis.PumpgwModel;

  const ACK_PATIENCE_MS = 15000; // then say that the gateway has not answered yet
  const SETTINGS_KEY = "pumpgw.dashboard.settings";
  const NAME_KEY = "pumpgw.dashboard.name";
  const PASSWORD_KEY = "pumpgw.dashboard.password";
  const SETTING_NAMES = ["broker_url", "prefix", "username", "stale_after_s"];

  const $ = (selector, root = document) => root.querySelector(selector);

  // --- settings: defaults < config.json < saved in this browser < the URL's query --

  function sameOriginBroker() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host || "localhost:9001"}/`;
  }

  async function loadSettings() {
    let settings = { broker_url: "", prefix: "pumpgw", username: "", stale_after_s: 600 };
    try {
      const response = await fetch("config.json", { cache: "no-store" });
      if (response.ok) settings = { ...settings, ...(await response.json()) };
    } catch {
      // no config.json next to the page: the defaults stand
    }
    try {
      settings = { ...settings, ...JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? "{}") };
    } catch {
      localStorage.removeItem(SETTINGS_KEY);
    }
    const query = new URLSearchParams(location.search);
    for (const name of SETTING_NAMES) {
      if (query.has(name)) settings[name] = query.get(name);
    }
    if (query.has("broker")) settings.broker_url = query.get("broker");
    settings.broker_url ||= sameOriginBroker();
    settings.stale_after_s = Number(settings.stale_after_s) > 0 ? Number(settings.stale_after_s) : 600;
    settings.password = sessionStorage.getItem(PASSWORD_KEY) ?? "";
    return settings;
  }

  // --- the connection ---------------------------------------------------------------

  const app = {
    settings: null,
    model: null,
    client: null,
    connection: { state: "connecting", detail: "" },
  };
  window.pumpgwDashboard = app; // for the browser tests and curious engineers

  function connect() {
    const { broker_url, prefix, username, password } = app.settings;
    app.model = M.createModel(prefix);
    setConnection("connecting", broker_url);
    const client = mqtt.connect(broker_url, {
      clientId: `pumpgw-dashboard-${Math.random().toString(16).slice(2, 10)}`,
      username: username || undefined,
      password: password || undefined,
      reconnectPeriod: 3000,
      connectTimeout: 10000,
      clean: true,
    });
    app.client = client;
    const decoder = new TextDecoder();
    client.on("connect", () => {
      setConnection("connected", broker_url);
      client.subscribe(M.subscriptions(prefix), { qos: 1 }, (err) => {
        if (err) setConnection("error", `subscribe refused: ${err.message}`);
      });
    });
    client.on("reconnect", () => setConnection("connecting", broker_url));
    client.on("offline", () => setConnection("offline", broker_url));
    client.on("close", () => {
      if (app.connection.state === "connected") setConnection("offline", broker_url);
    });
    client.on("error", (err) => setConnection("error", err.message));
    client.on("message", (topic, payload) => {
      if (M.applyMessage(app.model, topic, decoder.decode(payload), Date.now())) scheduleRender();
    });
    scheduleRender();
  }

  function setConnection(state, detail) {
    app.connection = { state, detail };
    app.model.connected = state === "connected";
    scheduleRender();
  }

  function acknowledge(gateway, alertId) {
    const input = $("#nurse-name");
    const now = Date.now();
    const command = M.ackCommand(app.model, gateway, alertId, input.value, now);
    if (command.error) {
      input.setCustomValidity(command.error);
      input.reportValidity();
      input.focus();
      return;
    }
    if (!app.client?.connected) {
      M.ackFailed(app.model, alertId, "not connected to the broker", now);
    } else {
      app.client.publish(command.topic, command.payload, { qos: 1 }, (err) => {
        if (err) {
          M.ackFailed(app.model, alertId, `not sent: ${err.message}`, Date.now());
          scheduleRender();
        }
      });
    }
    scheduleRender();
  }

  // --- rendering: keyed, in place, so a button under a finger is never replaced --

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render(Date.now());
    });
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setData(node, values) {
    for (const [key, value] of Object.entries(values)) {
      if (node.dataset[key] !== value) node.dataset[key] = value;
    }
  }

  // Make parent's children exactly one per item, in order, reusing nodes by key.
  function reconcile(parent, items, keyOf, create, update) {
    const existing = new Map([...parent.children].map((child) => [child.dataset.key, child]));
    items.forEach((item, i) => {
      const key = keyOf(item);
      let node = existing.get(key);
      if (node) existing.delete(key);
      else {
        node = create(item);
        node.dataset.key = key;
      }
      update(node, item);
      if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] ?? null);
    });
    for (const node of existing.values()) node.remove();
  }

  function render(now) {
    const { model, connection } = app;
    const badge = $("#connection");
    setData(badge, { state: connection.state });
    setText(badge, `${connection.state}${connection.detail ? ` · ${connection.detail}` : ""}`);
    const open = M.attention(model);
    const critical = open.filter((x) => x.alert.severity === "critical").length;
    setText($("#summary"), `${critical} critical · ${open.length - critical} warning`);
    renderAttention(open);
    const gateways = M.gateways(model);
    $("#no-gateways").hidden = gateways.length > 0;
    reconcile(
      $("#gateway-list"),
      gateways,
      (gw) => `gw:${gw.id}`,
      createGateway,
      (node, gw) => updateGateway(node, gw, now),
    );
    reconcile($("#timeline"), model.events.slice(0, 100), (e) => e.event_id, createEvent, updateEvent);
    reconcile(
      $("#results"),
      model.results,
      (r) => `${r.receivedAt}:${r.alert_id ?? ""}`,
      createResult,
      () => {},
    );
  }

  function renderAttention(open) {
    $("#attention-empty").hidden = open.length > 0;
    reconcile(
      $("#attention"),
      open,
      (x) => x.alert.alert_id,
      () => {
        const li = el("li", "attention-item");
        const link = el("a");
        link.append(el("span", "sev"), el("strong", "who"), el("span", "message"));
        li.append(link);
        return li;
      },
      (li, { gateway, label, alert }) => {
        setData(li, { severity: alert.severity, state: alert.state, alertId: alert.alert_id });
        const link = $("a", li);
        link.href = `#${cardId(gateway, alert.pump_id)}`;
        setText($(".sev", li), alert.severity);
        setText($(".who", li), label);
        setText($(".message", li), `${alert.state === "acknowledged" ? "(ack) " : ""}${alert.message}`);
      },
    );
  }

  function cardId(gateway, pumpId) {
    return pumpId === M.GATEWAY_PUMP ? `gw-${gateway}` : `pump-${gateway}-${pumpId}`;
  }

  function createGateway(gw) {
    const section = el("section", "gateway");
    section.id = cardId(gw.id, M.GATEWAY_PUMP);
    const head = el("header");
    head.append(
      el("h2", "gw-name", gw.id),
      el("span", "gw-status badge"),
      el("span", "gw-link badge"),
      el("span", "gw-programmer"),
      el("span", "gw-outbox"),
    );
    section.append(head, el("ul", "alerts gateway-alerts"), el("div", "pumps"));
    return section;
  }

  function updateGateway(section, gw, now) {
    setData(section, { gateway: gw.id });
    const status = $(".gw-status", section);
    setData(status, { status: gw.status ?? "unknown" });
    setText(status, gw.status ?? "status unknown");
    const info = gw.info;
    const link = $(".gw-link", section);
    setData(link, { link: info?.link ?? "unknown" });
    setText(link, info ? `programmer link ${info.link}${info.link_error ? ` (${info.link_error})` : ""}` : "no info yet");
    const prog = info?.programmer;
    setText($(".gw-programmer", section), prog ? `${prog.vendor} ${prog.model} ${prog.serial}` : "");
    const pending = info?.outbox?.pending;
    setText($(".gw-outbox", section), pending ? `${pending} messages queued` : "");
    renderAlerts($(".gateway-alerts", section), gw.id, gw.alerts, now);
    reconcile(
      $(".pumps", section),
      M.pumps(gw),
      (p) => p.id,
      createPump,
      (node, pump) => updatePump(node, gw, pump, now),
    );
  }

  function figure(className, label) {
    const div = el("div", `fig ${className}`);
    div.append(el("dt", "", label), el("dd"));
    return div;
  }

  function createPump(pump) {
    const card = el("article", "pump");
    const head = el("header");
    head.append(el("h3", "label"), el("span", "pump-id", pump.id), el("span", "stale-badge", "STALE"));
    const gauge = el("div", "gauge");
    gauge.setAttribute("role", "meter");
    gauge.setAttribute("aria-label", "Reservoir");
    gauge.append(el("div", "fill"));
    const reservoir = el("div", "reservoir");
    reservoir.append(el("p", "gauge-text"), gauge);
    const figures = el("dl", "figures");
    figures.append(
      figure("days", "Refill in"),
      figure("battery", "Battery"),
      figure("flow", "Flow"),
      figure("dose", "Dose"),
      figure("seen", "Last seen"),
    );
    card.append(head, reservoir, figures, el("p", "stale-reason"), el("ul", "alerts pump-alerts"));
    return card;
  }

  function updatePump(card, gw, pump, now) {
    const s = pump.state ?? {};
    card.id = cardId(gw.id, pump.id);
    const reasons = M.staleReasons(app.model, gw, pump, now, app.settings.stale_after_s * 1000);
    setData(card, { gateway: gw.id, pump: pump.id, stale: String(reasons.length > 0) });
    card.classList.toggle("stale", reasons.length > 0);
    setText($(".label", card), s.label ?? pump.id);
    $(".stale-badge", card).hidden = reasons.length === 0;
    setText($(".stale-reason", card), reasons.length ? `Not current: ${reasons.join("; ")}` : "");

    const gauge = $(".gauge", card);
    const share = M.fraction(s.reservoir_ml, s.capacity_ml);
    setData(gauge, { level: M.gaugeLevel(pump) });
    gauge.setAttribute("aria-valuemin", "0");
    gauge.setAttribute("aria-valuemax", String(s.capacity_ml ?? ""));
    if (s.reservoir_ml == null) gauge.removeAttribute("aria-valuenow");
    else gauge.setAttribute("aria-valuenow", String(s.reservoir_ml));
    $(".fill", gauge).style.width = share === null ? "0%" : `${(share * 100).toFixed(1)}%`;
    setText(
      $(".gauge-text", card),
      `Reservoir ${M.fmt(s.reservoir_ml, 1, "mL")}${s.capacity_ml != null ? ` of ${M.fmt(s.capacity_ml, 0, "mL")}` : ""}`,
    );

    setText($(".days dd", card), M.fmt(s.days_to_low_reservoir_alarm, 1, "days"));
    $(".days dd", card).title = s.refill_due ? `refill due ${M.shortTime(s.refill_due)}` : "";
    setText($(".battery dd", card), M.fmt(s.battery_pct, 0, "%"));
    const measured = s.drain_ml_per_day == null ? "" : ` (measured ${M.fmt(s.drain_ml_per_day, 2)})`;
    setText($(".flow dd", card), `${M.fmt(s.flow_ml_per_day, 2, "mL/day")}${measured}`);
    setText($(".dose dd", card), M.fmt(s.dose_mcg_per_day, 0, "mcg/day"));
    const seen = Date.parse(s.received_at);
    setText($(".seen dd", card), M.ago(seen, now));
    $(".seen dd", card).title = s.received_at ?? "";

    renderAlerts($(".pump-alerts", card), gw.id, pump.alerts, now);
  }

  function renderAlerts(list, gateway, alerts, now) {
    const open = M.sortAlerts(alerts.values());
    reconcile(list, open, (a) => a.alert_id, createAlert, (node, a) => updateAlert(node, gateway, a, now));
  }

  function createAlert() {
    const li = el("li", "alert");
    const head = el("div", "alert-head");
    head.append(el("span", "sev"), el("span", "type"), el("time", "raised"));
    const button = el("button", "ack-button", "Acknowledge");
    button.type = "button";
    button.addEventListener("click", () => acknowledge(li.dataset.gateway, li.dataset.alertId));
    li.append(head, el("p", "message"), el("p", "ack-info"), button, el("p", "ack-result"));
    $(".ack-result", li).setAttribute("role", "status");
    return li;
  }

  function updateAlert(li, gateway, alert, now) {
    setData(li, {
      gateway,
      alertId: alert.alert_id,
      type: alert.type,
      severity: alert.severity,
      state: alert.state,
    });
    setText($(".sev", li), alert.severity);
    setText($(".type", li), alert.type.replaceAll("_", " "));
    const raised = $(".raised", li);
    raised.dateTime = alert.raised_at;
    setText(raised, `since ${M.shortTime(alert.raised_at)}`);
    setText($(".message", li), alert.message);
    setText(
      $(".ack-info", li),
      alert.state === "acknowledged"
        ? `Acknowledged by ${alert.acknowledged_by} at ${M.shortTime(alert.acknowledged_at)}`
        : "",
    );
    const pending = app.model.pendingAcks.get(alert.alert_id);
    const outcome = app.model.ackOutcome.get(alert.alert_id);
    const button = $(".ack-button", li);
    button.hidden = alert.state !== "active";
    button.disabled = pending !== undefined;
    setText(button, pending ? "Sending…" : "Acknowledge");
    let result = "";
    if (pending) {
      result = now - pending.sentAt > ACK_PATIENCE_MS ? "No answer from the gateway yet (is it online?)" : "";
    } else if (outcome) {
      result = outcome.ok ? "Gateway confirmed the acknowledgement." : `Not acknowledged: ${outcome.error}`;
    }
    const resultNode = $(".ack-result", li);
    setData(resultNode, { ok: outcome ? String(outcome.ok) : "" });
    setText(resultNode, result);
  }

  function createEvent(event) {
    const li = el("li", "event");
    const when = el("time", "", M.shortTime(event.at));
    when.dateTime = event.at;
    const who = event.pump_id ? `${event.gateway} · ${event.pump_id}` : event.gateway;
    li.append(when, el("span", "who", who), el("span", "kind", event.kind.replaceAll("_", " ")), el("span", "text", M.eventText(event)));
    return li;
  }

  function updateEvent(li, event) {
    setData(li, { eventId: event.event_id, kind: event.kind, severity: event.alert?.severity ?? "" });
  }

  function createResult(result) {
    const what = result.ok
      ? `Acknowledged ${result.alert_id} (${result.gateway})`
      : `Command refused by ${result.gateway ?? "the page"}: ${result.error}`;
    const li = el("li", `result ${result.ok ? "ok" : "refused"}`, what);
    li.dataset.ok = String(result.ok);
    return li;
  }

  // --- start -------------------------------------------------------------------------

  function fillSettingsForm(settings) {
    const form = $("#settings-form");
    for (const name of [...SETTING_NAMES, "password"]) form.elements[name].value = settings[name] ?? "";
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const saved = {};
      for (const name of SETTING_NAMES) saved[name] = form.elements[name].value.trim();
      localStorage.setItem(SETTINGS_KEY, JSON.stringify(saved));
      sessionStorage.setItem(PASSWORD_KEY, form.elements.password.value);
      location.search = ""; // the saved settings win over the old query from now on
    });
  }

  async function start() {
    app.settings = await loadSettings();
    fillSettingsForm(app.settings);
    const name = $("#nurse-name");
    name.value = localStorage.getItem(NAME_KEY) ?? "";
    name.addEventListener("input", () => {
      name.setCustomValidity("");
      localStorage.setItem(NAME_KEY, name.value.trim());
    });
    connect();
    setInterval(() => scheduleRender(), 1000); // "last seen" and staleness move with time
  }

  start();
})();
