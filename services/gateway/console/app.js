// The Triggers developer console. Everything it shows comes from the public
// API under the signed-in key; the key lives in sessionStorage only. Data is
// always put into the page as text (never as HTML).
"use strict";

(() => {
  const KEY_STORAGE = "triggers.apiKey";
  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers -------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const clear = (node) => { while (node.firstChild) node.removeChild(node.firstChild); return node; };
  const statusBadge = (status) => el("span", { class: "status " + status }, status);
  const fmtNumber = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const fmtMs = (n) => (n === null || n === undefined ? "–" : String(Math.round(n * 10) / 10));
  const fmtRate = (r) => (r === null || r === undefined ? "–" : (Math.round(r * 1000) / 10).toFixed(1) + "%");
  const pad = (n) => String(n).padStart(2, "0");
  // Local time, sortable: 2026-11-23 23:50:33.
  const fmtTime = (iso) => {
    if (!iso) return "";
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };
  let toastTimer;
  function toast(text) {
    const t = $("toast");
    t.textContent = text;
    t.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.classList.remove("show"), 2500);
  }
  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
  function csv(rows, columns) {
    const cell = (v) => {
      const text = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
      return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
    };
    return [columns.join(","), ...rows.map((r) => columns.map((c) => cell(r[c])).join(","))].join("\n") + "\n";
  }

  // ---- API ---------------------------------------------------------------
  let apiKey = sessionStorage.getItem(KEY_STORAGE);
  const quota = { limit: null, remaining: null, reset: null, at: 0, limited: false };

  async function api(method, path, options = {}) {
    const headers = { Authorization: "Bearer " + apiKey, ...(options.headers || {}) };
    let body;
    if (options.raw !== undefined) {
      body = options.raw;
      headers["Content-Type"] = headers["Content-Type"] || "application/json";
    } else if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers["Content-Type"] = "application/json";
    }
    const started = performance.now();
    const sentAt = new Date();
    const response = await fetch(path, { method, headers, body });
    const text = await response.text();
    const ms = performance.now() - started;
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    noteQuota(response);
    if (response.status === 401 && !options.allowUnauthorized) signOut("The key was refused (401). Sign in again.");
    return { method, path, status: response.status, ok: response.ok, headers: response.headers, text, data, ms, sentAt, requestHeaders: headers, requestBody: body };
  }

  function noteQuota(response) {
    const limit = response.headers.get("ratelimit-limit");
    if (limit === null) return;
    quota.limit = Number(limit);
    quota.remaining = Number(response.headers.get("ratelimit-remaining"));
    quota.reset = Number(response.headers.get("ratelimit-reset"));
    quota.at = Date.now();
    quota.limited = response.status === 429;
    renderQuota();
  }

  function renderQuota() {
    const box = $("quota");
    box.hidden = false;
    if (quota.limit === null) {
      $("quota-text").textContent = "send an event to see your quota";
    } else {
      const left = Math.max(0, quota.reset - Math.floor((Date.now() - quota.at) / 1000));
      const remaining = left === 0 ? quota.limit : quota.remaining;
      $("quota-text").textContent = `${fmtNumber(remaining)}/${fmtNumber(quota.limit)} events/s left · resets in ${left}s`;
      box.classList.toggle("bad", quota.limited || remaining === 0);
      box.classList.toggle("warn", !quota.limited && remaining > 0 && remaining < quota.limit * 0.2);
    }
  }
  setInterval(() => { if (apiKey && quota.limit !== null) renderQuota(); }, 1000);

  async function refreshUsage() {
    const r = await api("GET", "/v1/analytics?range=1h");
    if (!r.ok || !r.data) return;
    const counts = r.data.series.map((p) => p.ingested);
    const total = counts.reduce((a, b) => a + b, 0);
    const peak = Math.max(0, ...counts);
    $("quota-usage").textContent = `· last hour: ${fmtNumber(total)} events, peak ${fmtNumber(peak)}/min`;
  }

  // ---- error catalog and docs ---------------------------------------------
  let catalog = [];
  fetch("/console/errors.json").then((r) => r.json()).then((c) => { catalog = c; }).catch(() => {});

  const DOCS = {
    composer: [
      ["POST /v1/events: ingest one event", "/docs#post-v1-events"],
      ["POST /v1/events/batch: up to 500", "/docs#post-v1-events-batch"],
      ["Idempotency keys", "/docs/errors#idempotency_key_reused"],
      ["POST /v1/subscriptions/{id}/test-match", "/docs#post-v1-subscriptions-id-test-match"],
      ["Rate limits (429)", "/docs/errors#rate_limited"],
    ],
    events: [
      ["GET /v1/events: filters and paging", "/docs#get-v1-events"],
      ["GET /v1/events/{id}: delivery history", "/docs#get-v1-events-id"],
      ["POST /v1/events/{id}/replay", "/docs#post-v1-events-id-replay"],
      ["POST /v1/inbox/{id}/ack", "/docs#post-v1-inbox-id-ack"],
      ["GET /v1/stream: live updates", "/docs#get-v1-stream"],
    ],
    subscriptions: [
      ["POST /v1/subscriptions", "/docs#post-v1-subscriptions"],
      ["PATCH /v1/subscriptions/{id}: pause, resume", "/docs#patch-v1-subscriptions-id"],
      ["Rotate a signing secret", "/docs#post-v1-subscriptions-id-rotate-secret"],
      ["Too many subscriptions (409)", "/docs/errors#limit_exceeded"],
    ],
    analytics: [
      ["GET /v1/analytics", "/docs#get-v1-analytics"],
      ["Dead letters: GET /v1/dlq", "/docs#get-v1-dlq"],
      ["Redrive: POST /v1/dlq/redrive", "/docs#post-v1-dlq-redrive"],
    ],
  };
  let docsPanel = "composer";
  let docsError = null;
  function renderDocs() {
    const list = clear($("docs-links"));
    for (const [text, href] of DOCS[docsPanel]) {
      list.append(el("li", {}, el("a", { href, target: "_blank", rel: "noopener" }, text)));
    }
    if (docsError) {
      list.append(el("li", {}, el("a", { href: "/docs/errors#" + docsError, target: "_blank", rel: "noopener", "data-testid": "docs-error-link" }, "On screen: error " + docsError)));
    }
  }

  // ---- sign in -------------------------------------------------------------
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    $("signin-error").textContent = "";
    if (!key) return;
    apiKey = key;
    const r = await api("GET", "/v1/subscriptions?limit=1", { allowUnauthorized: true });
    if (r.status === 401) {
      apiKey = null;
      $("signin-error").textContent = "This key was refused: check it, or ask the operator for a new one.";
      return;
    }
    if (!r.ok) {
      apiKey = null;
      $("signin-error").textContent = `The gateway answered ${r.status}; try again.`;
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    enter();
  });

  $("sign-out").addEventListener("click", () => signOut());

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    apiKey = null;
    live.stop();
    liveState.clear();
    events.length = 0;
    subscriptions = [];
    report = null;
    sentId = null;
    detailId = null;
    lastCall = null;
    if (chart) { chart.destroy(); chart = null; }
    // Nothing of this key's data stays on the page.
    for (const id of ["event-rows", "subscription-rows", "match-rows", "sent-timeline", "detail-deliveries", "detail-json",
      "kpis", "breakdown", "latency-rows", "error-rows", "top-failing", "subscription-figures", "chart", "subscription-message",
      "request-view", "response-view", "snippet", "quota-usage", "analytics-range"]) clear($(id));
    $("event-detail").hidden = true;
    $("sent").hidden = true;
    $("inspector").hidden = true;
    $("match-results").hidden = true;
    $("app").hidden = true;
    $("who").hidden = true;
    $("quota").hidden = true;
    quota.limit = null;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    $("api-key").focus();
  }

  function enter() {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who").hidden = false;
    renderQuota();
    live.start();
    showPanel("composer");
    loadSubscriptions();
    refreshUsage();
  }

  // ---- tabs ------------------------------------------------------------------
  const tabs = [...document.querySelectorAll('.tabs [role="tab"]')];
  function showPanel(name) {
    for (const tab of tabs) {
      const on = tab.dataset.panel === name;
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      $("panel-" + tab.dataset.panel).hidden = !on;
    }
    docsPanel = name;
    renderDocs();
    if (name === "events") loadEvents();
    if (name === "subscriptions") loadSubscriptions();
    if (name === "analytics") loadAnalytics();
  }
  for (const tab of tabs) {
    tab.addEventListener("click", () => showPanel(tab.dataset.panel));
    tab.addEventListener("keydown", (e) => {
      const i = tabs.indexOf(tab);
      const next = e.key === "ArrowRight" ? tabs[(i + 1) % tabs.length] : e.key === "ArrowLeft" ? tabs[(i + tabs.length - 1) % tabs.length] : null;
      if (next) { next.focus(); showPanel(next.dataset.panel); }
    });
  }

  // ---- live updates ------------------------------------------------------------
  // Per event: what the stream told (the same state machine as the store).
  const RANK = { pending: 0, retrying: 1, dead_lettered: 2, disabled: 2, skipped: 2, delivered: 3 };
  const liveState = new Map();
  function stateOf(id) {
    let s = liveState.get(id);
    if (!s) {
      s = { routed: false, unmatched: false, subs: new Map(), log: [], type: null };
      liveState.set(id, s);
      if (liveState.size > 5000) liveState.delete(liveState.keys().next().value);
    }
    return s;
  }
  function statusOf(s) {
    if (s.unmatched && s.subs.size === 0) return "unmatched";
    if (!s.routed && s.subs.size === 0) return "accepted";
    const states = [...s.subs.values()];
    if (states.length && states.every((v) => RANK[v] >= 2)) {
      return states.some((v) => v === "dead_lettered" || v === "disabled") ? "dead_lettered" : "delivered";
    }
    if (states.some((v) => v === "retrying" || v === "dead_lettered")) return "retrying";
    return "routed";
  }
  function applyUpdate(u) {
    // How long after the pipeline's step the page learned of it.
    u.shownAfterMs = Date.now() - Date.parse(u.at);
    const s = stateOf(u.event_id);
    s.log.push(u);
    if (u.kind === "accepted") s.type = u.type;
    else if (u.kind === "routed") {
      s.routed = true;
      for (const sub of u.subscriptions || []) if (!s.subs.has(sub)) s.subs.set(sub, "pending");
    } else if (u.kind === "unmatched") {
      s.routed = true;
      if (s.subs.size === 0) s.unmatched = true;
    } else if (u.subscription_id) {
      const prev = s.subs.get(u.subscription_id) || "pending";
      if (RANK[u.kind] > RANK[prev]) s.subs.set(u.subscription_id, u.kind);
      s.unmatched = false;
    }
    return s;
  }

  const live = {
    controller: null,
    retry: 1000,
    start() {
      if (this.controller) return;
      this.connect();
    },
    stop() {
      if (this.controller) this.controller.abort();
      this.controller = null;
      setLive(false);
    },
    async connect() {
      const controller = new AbortController();
      this.controller = controller;
      try {
        const response = await fetch("/v1/stream", { headers: { Authorization: "Bearer " + apiKey }, signal: controller.signal });
        if (!response.ok) throw new Error("HTTP " + response.status);
        setLive(true);
        this.retry = 1000;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            onFrame(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (_) {
        // Aborted on sign-out, or the connection dropped.
      }
      setLive(false);
      if (this.controller === controller && apiKey) {
        this.controller = null;
        setTimeout(() => { if (apiKey) this.start(); }, this.retry);
        this.retry = Math.min(this.retry * 2, 15000);
      }
    },
  };
  function setLive(on) {
    const dot = $("live-dot");
    dot.classList.toggle("on", on);
    dot.textContent = on ? "live" : "offline";
  }
  function onFrame(frame) {
    let name = "message";
    let data = "";
    for (const line of frame.split("\n")) {
      if (line.startsWith(":")) continue;
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (name === "lagged") {
      toast("Live updates fell behind; reloading");
      if (!$("panel-events").hidden) loadEvents();
      return;
    }
    if (name !== "update") return;
    let update;
    try { update = JSON.parse(data); } catch (_) { return; }
    const s = applyUpdate(update);
    const status = statusOf(s);
    if (update.event_id === sentId) renderSent();
    updateEventRow(update, s, status);
    if (detailId === update.event_id) {
      $("detail-status").replaceWith(Object.assign(statusBadge(status), { id: "detail-status" }));
      clearTimeout(detailRefresh);
      // The store trails the stream by a moment: read the history after it.
      detailRefresh = setTimeout(() => openDetail(detailId, true), 700);
    }
  }

  // ---- composer ----------------------------------------------------------------
  const TEMPLATES = {
    "order.created": { type: "order.created", source: "shop/checkout", subject: "order-1042", data: { order_id: 1042, total: 99.5, currency: "EUR", items: [{ sku: "SKU-1", qty: 2 }] } },
    "user.signup": { type: "user.signup", source: "auth/web", subject: "user-77", data: { user_id: 77, email: "ada@example.com", plan: "free" } },
    "payment.failed": { type: "payment.failed", source: "billing/stripe", subject: "invoice-501", data: { invoice_id: 501, amount: 12.0, currency: "USD", reason: "card_declined" } },
    custom: { type: "", source: "", data: {} },
  };
  const editor = $("event-json");
  function setTemplate(name) {
    editor.value = JSON.stringify(TEMPLATES[name], null, 2);
    validate();
    if (!$("editor-form").hidden) fillForm();
  }
  $("template").addEventListener("change", (e) => setTemplate(e.target.value));
  editor.addEventListener("input", validate);

  const EXTENSION = /^[a-z0-9]{1,20}$/;
  const KNOWN = new Set(["type", "source", "data", "payload", "id", "subject", "time", "partition_key", "specversion", "datacontenttype"]);
  // Mirrors the gateway's checks (docs/errors.md, invalid_field).
  function problemsOf(text) {
    let value;
    try {
      value = JSON.parse(text);
    } catch (e) {
      const at = /position (\d+)/.exec(e.message);
      let where = "";
      if (at) {
        const before = text.slice(0, Number(at[1]));
        const line = before.split("\n").length;
        where = ` (line ${line}, column ${before.length - before.lastIndexOf("\n")})`;
      }
      return { value: null, problems: [`Not valid JSON${where}: ${e.message}. Check for a missing comma, quote or brace.`] };
    }
    const problems = [];
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return { value: null, problems: ["The event must be a JSON object: {\"type\": …, \"source\": …, \"data\": …}."] };
    }
    const str = (name, max, required) => {
      const v = value[name];
      if (v === undefined || v === null) { if (required) problems.push(`"${name}" is required (a non-empty string).`); return; }
      if (typeof v !== "string" || !v.trim()) problems.push(`"${name}" must be a non-empty string.`);
      else if (v.length > max) problems.push(`"${name}" is longer than ${max} characters.`);
    };
    str("type", 256, true);
    str("source", 1024, true);
    str("subject", 1024, false);
    str("partition_key", 256, false);
    if (typeof value.source === "string" && /\s/.test(value.source)) problems.push('"source" must not contain whitespace (a URI-reference).');
    if (value.id !== undefined && !/^evt_[0-9A-HJKMNP-TV-Z]{26}$/.test(String(value.id))) problems.push('"id" must be evt_ followed by a ULID (or leave it out to have one assigned).');
    if (value.time !== undefined && (typeof value.time !== "string" || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(value.time))) problems.push('"time" must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z.');
    if (value.specversion !== undefined && value.specversion !== "1.0") problems.push('"specversion" must be "1.0".');
    if (value.data !== undefined && value.payload !== undefined) problems.push('Send "data" or "payload", not both.');
    for (const [name, v] of Object.entries(value)) {
      if (KNOWN.has(name)) continue;
      if (!EXTENSION.test(name)) problems.push(`"${name}" is not a known attribute; extension attributes are 1-20 lowercase letters or digits.`);
      else if (!["string", "number", "boolean"].includes(typeof v)) problems.push(`Extension "${name}" must be a string, number or boolean.`);
    }
    return { value, problems };
  }
  function validate() {
    const { problems } = problemsOf(editor.value);
    const list = clear($("json-problems"));
    list.classList.toggle("ok", problems.length === 0);
    for (const p of problems) list.append(el("li", {}, p));
    editor.setAttribute("aria-invalid", String(problems.length > 0));
    return problems.length === 0;
  }

  // Form mode edits the common fields; the JSON stays the source of truth.
  const formFields = [...document.querySelectorAll("#editor-form [data-field]")];
  function fillForm() {
    const { value } = problemsOf(editor.value);
    const v = value || {};
    for (const input of formFields) input.value = v[input.dataset.field] ?? "";
    $("f-data").value = JSON.stringify(v.data ?? v.payload ?? {}, null, 2);
  }
  function formToJson() {
    const { value } = problemsOf(editor.value);
    const v = value || {};
    for (const input of formFields) {
      const name = input.dataset.field;
      if (input.value.trim()) v[name] = input.value; else delete v[name];
    }
    try {
      v.data = JSON.parse($("f-data").value || "{}");
      delete v.payload;
      $("f-data").removeAttribute("aria-invalid");
    } catch (_) {
      $("f-data").setAttribute("aria-invalid", "true");
    }
    editor.value = JSON.stringify(v, null, 2);
    validate();
  }
  for (const input of [...formFields, $("f-data")]) input.addEventListener("input", formToJson);
  function setMode(form) {
    if (form) fillForm();
    $("editor-form").hidden = !form;
    $("editor-json").hidden = form;
    $("mode-form").setAttribute("aria-pressed", String(form));
    $("mode-json").setAttribute("aria-pressed", String(!form));
  }
  $("mode-json").addEventListener("click", () => setMode(false));
  $("mode-form").addEventListener("click", () => setMode(true));
  $("new-idempotency-key").addEventListener("click", () => { $("idempotency-key").value = crypto.randomUUID(); });

  let sentId = null;
  let lastCall = null;
  let snippetLang = "curl";

  async function send(body) {
    const headers = {};
    const idem = $("idempotency-key").value.trim();
    if (idem) headers["Idempotency-Key"] = idem;
    const r = await api("POST", "/v1/events", { raw: body, headers });
    showInspector(r);
    if (r.status === 202 && r.data && r.data.id) {
      sentId = r.data.id;
      $("sent").hidden = false;
      renderSent();
    }
    return r;
  }
  $("send").addEventListener("click", async () => {
    if (!validate()) {
      toast("Fix the problems listed under the editor first");
      editor.focus();
      return;
    }
    $("send").disabled = true;
    try { await send(editor.value); } finally { $("send").disabled = false; }
  });

  function renderSent() {
    $("sent-id").textContent = sentId;
    const s = liveState.get(sentId);
    const status = s ? statusOf(s) : "accepted";
    $("sent-status").className = "status " + status;
    $("sent-status").textContent = status;
    const list = clear($("sent-timeline"));
    for (const u of s ? s.log : []) list.append(describeUpdate(u));
  }
  function describeUpdate(u) {
    const at = new Date(u.at).toLocaleTimeString();
    let text;
    switch (u.kind) {
      case "accepted": text = "accepted"; break;
      case "routed": text = `routed to ${u.subscriptions.length} subscription(s)`; break;
      case "unmatched": text = "no subscription matched"; break;
      default: {
        const answer = u.http_status ? `HTTP ${u.http_status}` : u.error || "no answer";
        const latency = u.latency_ms !== undefined ? ` in ${u.latency_ms} ms` : "";
        text = `attempt ${u.attempt} to ${u.subscription_id}: ${u.kind} (${answer}${latency})`;
        if (u.kind === "retrying" && u.error && u.http_status) text += `: ${u.error}`;
        if (u.next_attempt_at) text += ` · next attempt ${fmtTime(u.next_attempt_at)}`;
      }
    }
    return el("li", { class: u.kind, "data-kind": u.kind, "data-shown-after-ms": u.shownAfterMs }, `${at} · ${text}`);
  }

  function showInspector(r) {
    lastCall = r;
    $("inspector").hidden = false;
    const url = location.origin + r.path;
    const shownHeaders = Object.entries(r.requestHeaders).map(([k, v]) => `${k}: ${k === "Authorization" ? "Bearer " + mask(apiKey) : v}`);
    $("request-view").textContent = `${r.method} ${url}\n${shownHeaders.join("\n")}\n\n${r.requestBody || ""}`;
    const headerLines = [];
    r.headers.forEach((v, k) => headerLines.push(`${k}: ${v}`));
    let body = r.text;
    try { body = JSON.stringify(JSON.parse(r.text), null, 2); } catch (_) { /* not JSON */ }
    $("response-view").textContent = `HTTP ${r.status}\n${headerLines.join("\n")}\n\n${body}`;
    const badge = $("response-status");
    badge.className = "status " + (r.ok ? "s2" : r.status >= 500 ? "s5" : "s4");
    badge.textContent = String(r.status);
    $("timing").textContent = `sent ${r.sentAt.toISOString()} · answered in ${Math.round(r.ms)} ms`;
    const help = $("error-help");
    const code = r.data && r.data.error && r.data.error.code;
    docsError = code || null;
    renderDocs();
    if (code) {
      const entry = catalog.find((c) => c.code === code);
      clear(help).append(
        el("p", {}, el("b", {}, `${r.status} ${code}: `), r.data.error.message || ""),
        entry ? el("p", {}, el("b", {}, "Cause. "), entry.cause.replace(/`/g, "")) : null,
        entry ? el("p", {}, el("b", {}, "Fix. "), entry.fix.replace(/`/g, "")) : null,
        el("p", {}, el("a", { href: "/docs/errors#" + code, target: "_blank", rel: "noopener" }, "Error catalog: " + code)),
      );
      help.hidden = false;
    } else {
      help.hidden = true;
    }
    renderSnippet();
  }
  const mask = (key) => (key ? key.slice(0, 6) + "…" + key.slice(-4) : "");
  function renderSnippet() {
    if (!lastCall) return;
    const url = location.origin + lastCall.path;
    const extra = Object.entries(lastCall.requestHeaders).filter(([k]) => k !== "Authorization" && k !== "Content-Type");
    const body = lastCall.requestBody || "";
    let text;
    // A JSON body is shown as the language's own literal where it can be.
    let pretty = null;
    try { pretty = JSON.stringify(JSON.parse(body), null, 2); } catch (_) { pretty = null; }
    if (snippetLang === "curl") {
      text = [`curl -sS -X ${lastCall.method} '${url}' \\`, `  -H "Authorization: Bearer $TRIGGERS_API_KEY" \\`, `  -H 'Content-Type: application/json' \\`,
        ...extra.map(([k, v]) => `  -H '${k}: ${v}' \\`), `  --data-binary @- <<'JSON'`, body, "JSON"].join("\n");
    } else if (snippetLang === "python") {
      const hs = extra.map(([k, v]) => `        ${JSON.stringify(k)}: ${JSON.stringify(v)},`);
      const literal = pretty !== null && !pretty.includes('"""') && !pretty.includes("\\") ? `"""${pretty}"""` : JSON.stringify(body);
      text = ["import os", "", "import requests", "", `body = ${literal}`, "response = requests.post(", `    ${JSON.stringify(url)},`, "    headers={",
        '        "Authorization": "Bearer " + os.environ["TRIGGERS_API_KEY"],', '        "Content-Type": "application/json",', ...hs, "    },", "    data=body.encode(),",
        "    timeout=10,", ")", "print(response.status_code, response.json())"].join("\n");
    } else {
      const hs = extra.map(([k, v]) => `    ${JSON.stringify(k)}: ${JSON.stringify(v)},`);
      const literal = pretty !== null ? `JSON.stringify(${pretty})` : JSON.stringify(body);
      text = [`const body = ${literal};`, `const response = await fetch(${JSON.stringify(url)}, {`, '  method: "POST",', "  headers: {",
        "    Authorization: `Bearer ${process.env.TRIGGERS_API_KEY}`,", '    "Content-Type": "application/json",', ...hs, "  },", "  body,", "});",
        "console.log(response.status, await response.json());"].join("\n");
    }
    $("snippet").textContent = text;
  }
  for (const button of document.querySelectorAll("[data-snippet]")) {
    button.addEventListener("click", () => {
      snippetLang = button.dataset.snippet;
      for (const b of document.querySelectorAll("[data-snippet]")) b.setAttribute("aria-selected", String(b === button));
      renderSnippet();
    });
  }
  $("copy-snippet").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("snippet").textContent); toast("Copied"); } catch (_) { toast("Select the text and copy it"); }
  });

  // ---- test match ------------------------------------------------------------------
  let subscriptions = [];
  $("test-match").addEventListener("click", async () => {
    if (!validate()) { toast("Fix the event first"); return; }
    await loadSubscriptions();
    const rows = clear($("match-rows"));
    $("match-results").hidden = false;
    if (subscriptions.length === 0) {
      rows.append(el("tr", {}, el("td", { colspan: 3 }, "No subscriptions: nothing would receive it.")));
      return;
    }
    const { value } = problemsOf(editor.value);
    for (const sub of subscriptions) {
      const r = await api("POST", `/v1/subscriptions/${sub.id}/test-match`, { raw: editor.value });
      let why;
      let verdict = "no";
      if (!r.ok) why = r.data && r.data.error ? r.data.error.message : `HTTP ${r.status}`;
      else if (r.data.matches) { verdict = "yes"; why = "type and filter match; active"; }
      else {
        const reasons = [];
        if (!r.data.event_type_matched) reasons.push(`type ${JSON.stringify(value.type)} is not one of ${describeTypes(sub.event_types)}`);
        if (!r.data.filter_matched) reasons.push(`the filter does not hold: ${describeFilter(sub.filter)}`);
        if (r.data.status !== "active") reasons.push(`the subscription is ${r.data.status}`);
        why = reasons.join("; ");
      }
      rows.append(el("tr", { "data-subscription": sub.id, "data-matches": verdict },
        el("td", {}, el("code", {}, sub.id), sub.description ? ` ${sub.description}` : ""),
        el("td", {}, statusBadge(verdict === "yes" ? "delivered" : "unmatched")),
        el("td", {}, why)));
    }
  });

  // ---- events ------------------------------------------------------------------------
  const events = [];
  let eventsCursor = null;
  let detailId = null;
  let detailRefresh;
  let detailEvent = null;

  function eventQuery() {
    const form = new FormData($("event-filters"));
    const params = new URLSearchParams({ limit: "50" });
    for (const name of ["type", "status"]) if (form.get(name)) params.set(name, form.get(name));
    for (const name of ["since", "until"]) if (form.get(name)) params.set(name, new Date(form.get(name)).toISOString());
    return params;
  }
  const filtersEmpty = () => [...new FormData($("event-filters")).values()].every((v) => !v);
  async function loadEvents(more) {
    const params = eventQuery();
    if (more && eventsCursor) params.set("cursor", eventsCursor);
    const r = await api("GET", "/v1/events?" + params);
    if (!r.ok) { toast(`Listing failed: HTTP ${r.status}`); return; }
    if (!more) { events.length = 0; clear($("event-rows")); }
    for (const e of r.data.data) { events.push(e); $("event-rows").append(eventRow(e)); }
    eventsCursor = r.data.next_cursor;
    $("more-events").hidden = !eventsCursor;
    $("events-empty").hidden = events.length > 0;
  }
  function payloadSummary(data) {
    const text = data === null || data === undefined ? "" : JSON.stringify(data);
    return text.length > 60 ? text.slice(0, 60) + "…" : text;
  }
  function eventRow(e) {
    const row = el("tr", { "data-event": e.id, tabindex: 0 },
      el("td", {}, fmtTime(e.received_at)), el("td", {}, el("code", {}, e.id)), el("td", {}, e.type),
      el("td", { class: "st" }, statusBadge(e.status)), el("td", {}, el("code", {}, payloadSummary(e.data))));
    row.addEventListener("click", () => openDetail(e.id));
    row.addEventListener("keydown", (k) => { if (k.key === "Enter") openDetail(e.id); });
    return row;
  }
  function updateEventRow(u, s, status) {
    let row = document.querySelector(`#event-rows tr[data-event="${CSS.escape(u.event_id)}"]`);
    const known = events.find((e) => e.id === u.event_id);
    if (!row && u.kind === "accepted" && filtersEmpty()) {
      const e = { id: u.event_id, type: u.type, received_at: u.at, status: "accepted", data: null };
      events.unshift(e);
      row = eventRow(e);
      $("event-rows").prepend(row);
      $("events-empty").hidden = true;
    }
    if (known) known.status = status;
    if (row) clear(row.querySelector(".st")).append(statusBadge(status));
  }
  $("event-filters").addEventListener("submit", (e) => { e.preventDefault(); loadEvents(); });
  $("more-events").addEventListener("click", () => loadEvents(true));
  const EVENT_COLUMNS = ["id", "received_at", "time", "type", "source", "subject", "status", "data"];
  $("export-json").addEventListener("click", () => download("events.json", "application/json", JSON.stringify(events, null, 2)));
  $("export-csv").addEventListener("click", () => download("events.csv", "text/csv", csv(events, EVENT_COLUMNS)));

  async function openDetail(id, quiet) {
    const r = await api("GET", "/v1/events/" + encodeURIComponent(id));
    if (!r.ok) { if (!quiet) toast(`Cannot read ${id}: HTTP ${r.status}`); return; }
    detailId = id;
    detailEvent = r.data;
    for (const row of document.querySelectorAll("#event-rows tr")) row.classList.toggle("selected", row.dataset.event === id);
    $("event-detail").hidden = false;
    $("detail-id").textContent = id;
    // The stream may know more than the store has written yet.
    const s = liveState.get(id);
    const status = s && RANK_STATUS(statusOf(s)) > RANK_STATUS(r.data.status) ? statusOf(s) : r.data.status;
    $("detail-status").replaceWith(Object.assign(statusBadge(status), { id: "detail-status" }));
    const box = clear($("detail-deliveries"));
    const deliveries = r.data.deliveries || [];
    if (deliveries.length === 0) box.append(el("p", { class: "muted" }, r.data.status === "unmatched" ? "No subscription matched this event." : "Not routed yet."));
    for (const d of deliveries) {
      const liveSub = s && s.subs.get(d.subscription_id);
      const state = liveSub && RANK[liveSub] > RANK[d.state] ? liveSub : d.state;
      const list = el("ol", { class: "timeline" });
      for (const a of d.attempts) {
        const answer = a.http_status ? `HTTP ${a.http_status}` : a.error || "";
        const next = a.next_attempt_at ? ` · next attempt ${fmtTime(a.next_attempt_at)}` : "";
        list.append(el("li", { class: a.outcome, "data-outcome": a.outcome },
          `#${a.attempt} ${fmtTime(a.at)} · ${a.outcome} · ${answer}${a.latency_ms !== null && a.latency_ms !== undefined ? ` · ${a.latency_ms} ms` : ""}${next}`,
          a.error && a.http_status ? el("div", { class: "muted" }, a.error) : null));
      }
      if (d.attempts.length === 0) list.append(el("li", {}, "no attempt yet"));
      box.append(el("div", { class: "delivery", "data-subscription": d.subscription_id }, el("p", {}, el("code", {}, d.subscription_id), " ", statusBadge(state)), list));
    }
    $("detail-json").textContent = JSON.stringify({ id: r.data.id, type: r.data.type, source: r.data.source, subject: r.data.subject, time: r.data.time, data: r.data.data }, null, 2);
  }
  const STATUS_ORDER = ["accepted", "routed", "retrying", "dead_lettered", "unmatched", "delivered", "acknowledged"];
  const RANK_STATUS = (s) => STATUS_ORDER.indexOf(s);

  function composedFromDetail() {
    const e = detailEvent;
    const v = { type: e.type, source: e.source };
    if (e.subject) v.subject = e.subject;
    v.data = e.data;
    return JSON.stringify(v, null, 2);
  }
  $("resubmit").addEventListener("click", async () => {
    if (!detailEvent) return;
    const r = await send(composedFromDetail());
    $("detail-message").textContent = r.status === 202 ? `Re-submitted as ${r.data.id}` : `Refused: HTTP ${r.status}`;
  });
  $("edit-resubmit").addEventListener("click", () => {
    if (!detailEvent) return;
    editor.value = composedFromDetail();
    validate();
    setMode(false);
    showPanel("composer");
    editor.focus();
  });
  $("replay").addEventListener("click", async () => {
    const r = await api("POST", `/v1/events/${encodeURIComponent(detailId)}/replay`, { json: {} });
    $("detail-message").textContent = r.ok ? "Replay accepted: deliveries start again" : `Replay refused: ${(r.data && r.data.error && r.data.error.message) || r.status}`;
  });
  $("acknowledge").addEventListener("click", async () => {
    const r = await api("POST", `/v1/inbox/${encodeURIComponent(detailId)}/ack`);
    $("detail-message").textContent = r.ok ? "Acknowledged: it leaves the inbox and pending retries stop" : `Refused: HTTP ${r.status}`;
    if (r.ok) openDetail(detailId, true);
  });

  // ---- subscriptions ------------------------------------------------------------------
  const OPS = { eq: "=", ne: "≠", in: "is one of", prefix: "starts with", gt: ">", gte: "≥", lt: "<", lte: "≤" };
  function describeFilter(f) {
    if (!f) return "none";
    if (Array.isArray(f.and)) return f.and.map((x) => "(" + describeFilter(x) + ")").join(" and ");
    if (Array.isArray(f.or)) return f.or.map((x) => "(" + describeFilter(x) + ")").join(" or ");
    if (f.not) return "not (" + describeFilter(f.not) + ")";
    const op = Object.keys(f).find((k) => k !== "field");
    if (!op) return JSON.stringify(f);
    if (op === "exists") return `${f.field} ${f.exists ? "exists" : "is missing"}`;
    const value = Array.isArray(f[op]) ? f[op].map((v) => JSON.stringify(v)).join(", ") : JSON.stringify(f[op]);
    return `${f.field} ${OPS[op] || op} ${value}`;
  }
  function describeTypes(types) {
    return types.map((t) => (t === "*" ? "every type" : t.endsWith(".*") ? `any ${t.slice(0, -1)}… type` : t)).join(", ");
  }
  function maskUrl(text) {
    try {
      const u = new URL(text);
      const rest = u.pathname + u.search;
      return `${u.protocol}//${u.host}/${rest.length > 5 ? "••••" + rest.slice(-4) : "••••"}`;
    } catch (_) { return "••••"; }
  }
  async function loadSubscriptions() {
    const r = await api("GET", "/v1/subscriptions?limit=1000");
    if (!r.ok) return;
    subscriptions = r.data.data;
    const rows = clear($("subscription-rows"));
    $("subscriptions-empty").hidden = subscriptions.length > 0;
    for (const s of subscriptions) {
      const paused = s.status !== "active";
      rows.append(el("tr", { "data-subscription": s.id },
        el("td", {}, el("code", {}, s.id), s.description ? el("div", { class: "muted" }, s.description) : null),
        el("td", {}, describeTypes(s.event_types), el("div", { class: "muted" }, "filter: " + describeFilter(s.filter))),
        el("td", {}, el("code", { title: "masked" }, maskUrl(s.target_url))),
        el("td", {}, statusBadge(s.status), s.disabled_reason ? el("div", { class: "muted" }, s.disabled_reason) : null),
        el("td", {},
          el("button", { type: "button", onclick: () => setStatus(s, paused ? "active" : "paused") }, paused ? "Resume" : "Pause"), " ",
          el("button", { type: "button", onclick: () => rotate(s) }, "Rotate secret"), " ",
          el("button", { type: "button", onclick: () => remove(s) }, "Delete"))));
    }
  }
  async function setStatus(s, status) {
    const r = await api("PATCH", `/v1/subscriptions/${s.id}`, { json: { status } });
    toast(r.ok ? `${s.id} is ${status}` : `Refused: HTTP ${r.status}`);
    loadSubscriptions();
  }
  async function rotate(s) {
    const r = await api("POST", `/v1/subscriptions/${s.id}/rotate-secret`, { json: {} });
    const message = clear($("subscription-message"));
    if (r.ok) message.append("New secret for ", el("code", {}, s.id), " (shown once; the old one keeps signing for the overlap): ", el("div", { class: "secret" }, r.data.secret));
    else message.append(`Rotation refused: HTTP ${r.status}`);
  }
  async function remove(s) {
    if (!confirm(`Delete ${s.id}? Its pending deliveries stop.`)) return;
    const r = await api("DELETE", `/v1/subscriptions/${s.id}`);
    toast(r.ok ? `${s.id} deleted` : `Refused: HTTP ${r.status}`);
    loadSubscriptions();
  }
  $("subscription-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const body = {
      target_url: form.get("target_url"),
      event_types: String(form.get("event_types")).split(",").map((t) => t.trim()).filter(Boolean),
    };
    if (form.get("description")) body.description = form.get("description");
    const message = clear($("subscription-message"));
    if (form.get("filter")) {
      try { body.filter = JSON.parse(form.get("filter")); } catch (_) { message.append("The filter is not valid JSON."); return; }
    }
    const r = await api("POST", "/v1/subscriptions", { json: body });
    if (r.status === 201) {
      message.append("Created ", el("code", { "data-testid": "created-subscription" }, r.data.id), ". Its signing secret (shown only now): ", el("div", { class: "secret" }, r.data.secret));
      e.target.reset();
      loadSubscriptions();
    } else {
      const err = r.data && r.data.error;
      message.append(el("span", { class: "error" }, `${r.status} ${err ? err.code + ": " + err.message : ""}`));
    }
  });

  // ---- analytics ------------------------------------------------------------------------
  let range = "1h";
  let report = null;
  let chart = null;
  for (const button of document.querySelectorAll("#ranges [data-range]")) {
    button.addEventListener("click", () => {
      range = button.dataset.range;
      for (const b of document.querySelectorAll("#ranges [data-range]")) b.setAttribute("aria-pressed", String(b === button));
      loadAnalytics();
    });
  }
  $("refresh-analytics").addEventListener("click", () => loadAnalytics());
  async function loadAnalytics() {
    const r = await api("GET", "/v1/analytics?range=" + range);
    if (!r.ok) { toast(`Analytics failed: HTTP ${r.status}`); return; }
    report = r.data;
    renderAnalytics();
  }
  function kpi(id, label, value, grade) {
    return el("div", { class: "kpi " + (grade || ""), "data-testid": "kpi-" + id }, el("div", { class: "v" }, value), el("div", { class: "k" }, label));
  }
  function renderAnalytics() {
    const t = report.totals;
    const l = report.latency_ms;
    $("analytics-range").textContent = `${fmtTime(report.since)} to ${fmtTime(report.until)}`;
    $("analytics-range").dataset.since = report.since;
    const grade = t.success_rate === null ? "" : t.success_rate > 0.95 ? "good" : t.success_rate >= 0.9 ? "meh" : "poor";
    clear($("kpis")).append(
      kpi("ingested", "events ingested", fmtNumber(t.ingested)),
      kpi("delivered", "events delivered", fmtNumber(t.delivered)),
      kpi("success", "delivery success rate", fmtRate(t.success_rate), grade),
      kpi("failed", "failed attempts", fmtNumber(t.failed_attempts)),
      kpi("ingest-p95", "ingest p95 (ms)", fmtMs(l.ingest.p95)),
      kpi("e2e-p95", "end-to-end p95 (ms)", fmtMs(l.end_to_end.p95)),
    );
    const statuses = ["delivered", "pending", "retrying", "dead_lettered", "unmatched", "acknowledged"];
    const total = statuses.reduce((a, k) => a + report.status[k], 0);
    const box = clear($("breakdown"));
    for (const k of statuses) {
      const n = report.status[k];
      const pct = total ? (n / total) * 100 : 0;
      const fill = el("div", { class: "fill " + k });
      fill.style.width = pct.toFixed(1) + "%";
      box.append(el("div", { class: "bar", "data-status": k }, el("span", {}, k.replace("_", " ")), el("div", { class: "track" }, fill), el("span", { class: "n" }, `${fmtNumber(n)} (${pct.toFixed(1)}%)`)));
    }
    const lat = clear($("latency-rows"));
    for (const [name, p] of [["ingest (202)", l.ingest], ["end to end", l.end_to_end], ["webhook request", l.attempt]]) {
      lat.append(el("tr", {}, el("th", {}, name), el("td", {}, fmtMs(p.p50)), el("td", {}, fmtMs(p.p95)), el("td", {}, fmtMs(p.p99)), el("td", {}, fmtNumber(p.count))));
    }
    const errs = clear($("error-rows"));
    const entries = Object.entries(report.errors).sort((a, b) => b[1] - a[1]);
    if (entries.length === 0) errs.append(el("tr", {}, el("td", { class: "muted" }, "No failed attempts.")));
    for (const [k, v] of entries) errs.append(el("tr", {}, el("td", {}, k.replace("_", " ")), el("td", {}, fmtNumber(v))));
    const top = clear($("top-failing"));
    if (report.top_failing.length === 0) top.append(el("li", { class: "muted" }, "none"));
    for (const id of report.top_failing) {
      const f = report.subscriptions.find((s) => s.subscription_id === id);
      top.append(el("li", {}, el("code", {}, id), ` · ${fmtNumber(f ? f.failed_attempts : 0)} failed attempts`));
    }
    const subs = clear($("subscription-figures"));
    for (const s of report.subscriptions) {
      subs.append(el("tr", { "data-subscription": s.subscription_id }, el("td", {}, el("code", {}, s.subscription_id)), el("td", {}, fmtNumber(s.attempts)),
        el("td", {}, fmtNumber(s.delivered)), el("td", {}, fmtNumber(s.failed_attempts)), el("td", {}, fmtNumber(s.dead_lettered)),
        el("td", {}, fmtRate(s.success_rate)), el("td", {}, fmtMs(s.attempt_latency_ms.p95)), el("td", {}, fmtMs(s.end_to_end_latency_ms.p95))));
    }
    $("granularity").textContent = report.granularity;
    drawChart();
  }
  function drawChart() {
    const box = $("chart");
    const xs = report.series.map((p) => Date.parse(p.at) / 1000);
    const data = [xs, report.series.map((p) => p.ingested), report.series.map((p) => p.delivered), report.series.map((p) => p.failed_attempts)];
    if (chart) chart.destroy();
    clear(box);
    if (typeof uPlot === "undefined") { box.append(el("p", { class: "muted" }, "Charts unavailable.")); return; }
    chart = new uPlot({
      width: Math.max(280, box.clientWidth - 8), height: 220,
      series: [{}, { label: "ingested", stroke: "#2f5fd0", fill: "rgba(47,95,208,.08)" }, { label: "delivered", stroke: "#1f8a4c" }, { label: "failed attempts", stroke: "#c53030" }],
      axes: [{}, { size: 50 }],
      scales: { x: { time: true } },
    }, data, box);
  }
  window.addEventListener("resize", () => { if (chart) chart.setSize({ width: Math.max(280, $("chart").clientWidth - 8), height: 220 }); });
  const REPORT_COLUMNS = ["at", "ingested", "delivered", "failed_attempts", "dead_lettered", "e2e_p95"];
  $("analytics-json").addEventListener("click", () => report && download(`analytics-${range}.json`, "application/json", JSON.stringify(report, null, 2)));
  $("analytics-csv").addEventListener("click", () => report && download(`analytics-${range}.csv`, "text/csv", csv(report.series, REPORT_COLUMNS)));

  // ---- start -------------------------------------------------------------------------------
  setTemplate("order.created");
  renderDocs();
  if (apiKey) enter(); else $("api-key").focus();
  setInterval(() => { if (apiKey) refreshUsage(); }, 60000);
})();
