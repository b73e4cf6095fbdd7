// The status page: polls /status.json every two seconds and the
// dead-letter queues every five, draws what they say, and sends a redrive
// with the token typed in. No library: the page must work offline.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const POLL_MS = 2000;
const DLQ_POLL_MS = 5000;
let dlqQueues = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) node.append(child);
  return node;
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 }));
const ms = (n) => (n >= 1000 ? `${(n / 1000).toFixed(1)} s` : `${n.toFixed(n < 10 ? 1 : 0)} ms`);
const bytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`);
const age = (msAgo) => {
  const s = Math.round(msAgo / 1000);
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m ago`;
};

function pill(id, text, level) {
  const node = $(id);
  node.textContent = text;
  node.className = `pill ${level}`;
}

function bar(id, value, max) {
  const share = max > 0 ? Math.min(1, value / max) : 0;
  const node = $(id);
  node.style.width = `${(share * 100).toFixed(1)}%`;
  node.className = share >= 0.8 ? "bad" : share >= 0.5 ? "warn" : "";
}

function rows(tbody, list, make) {
  tbody.replaceChildren(...list.map(make));
}

// The charts span what the worker kept (up to five minutes), and at
// least half a minute, ending at the last sample.
const WINDOW_MIN_MS = 30 * 1000;

// Lines over the window, scaled to the largest value, drawn at the size
// the SVG has on screen (so the labels are not stretched).
function chart(svg, legend, times, series) {
  const w = Math.max(200, Math.round(svg.clientWidth || 600)), h = 160, pad = 18;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const max = Math.max(1, ...series.flatMap((s) => s.values.filter(Number.isFinite)));
  const t1 = times[times.length - 1] ?? Date.now();
  const span = Math.max(WINDOW_MIN_MS, t1 - (times[0] ?? t1));
  const t0 = t1 - span;
  const x = (t) => ((t - t0) / span) * w;
  const y = (v) => h - pad - (v / max) * (h - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const parts = [];
  for (const f of [0, 0.5, 1]) {
    const line = document.createElementNS(ns, "line");
    Object.entries({ x1: 0, x2: w, y1: y(max * f), y2: y(max * f), class: "grid-line" }).forEach(([k, v]) => line.setAttribute(k, v));
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 4);
    label.setAttribute("y", y(max * f) - 3);
    label.textContent = fmt(max * f);
    parts.push(line, label);
  }
  for (const s of series) {
    const points = s.values.map((v, i) => (Number.isFinite(v) ? `${x(times[i]).toFixed(1)},${y(v).toFixed(1)}` : null)).filter(Boolean);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", s.color);
    line.setAttribute("stroke-width", "1.6");
    parts.push(line);
  }
  svg.replaceChildren(...parts);
  legend.replaceChildren(...series.map((s) => {
    const last = s.values[s.values.length - 1];
    return el("span", {}, el("b", { style: `background:${s.color}` }), `${s.name} ${fmt(last)}`);
  }));
}

// Counters to per-second rates between consecutive samples.
function rate(history, key) {
  return history.map((p, i) => {
    if (i === 0) return NaN;
    const prev = history[i - 1];
    const dt = (p.at_ms - prev.at_ms) / 1000;
    return dt > 0 ? Math.max(0, (p[key] - prev[key]) / dt) : NaN;
  });
}

function renderNow(s) {
  const n = s.now;
  $("#source").textContent = s.source;
  pill("#state", n.state, n.state === "running" ? "ok" : "warn");
  const reasons = s.readiness.reasons.map((r) => r.reason.replaceAll("_", " ")).join(", ");
  pill("#ready", s.readiness.ready ? "ready" : `not ready: ${reasons}`, s.readiness.ready ? "ok" : "bad");
  pill("#breaker", `breaker ${n.breaker}`, n.breaker === "closed" ? "ok" : "bad");
  pill("#broker", `${s.broker.kind} ${s.broker.connected ? "connected" : "disconnected"}`, s.broker.connected ? "ok" : "bad");
  $("#held").textContent = `${fmt(n.held)} / ${fmt(n.prefetch)}`;
  bar("#held-bar", n.held, n.prefetch);
  $("#running").textContent = `${fmt(n.running)} / ${fmt(n.limit)}`;
  bar("#running-bar", n.running, n.limit);
  $("#queued").textContent = fmt(n.queued);
  $("#bytes").textContent = n.prefetch_bytes > 0 ? `${bytes(n.held_bytes)} of ${bytes(n.prefetch_bytes)} held` : `${bytes(n.held_bytes)} held`;
  $("#waiting").textContent = fmt(s.scale.waiting);
  $("#drain").textContent = s.scale.drain_seconds === null ? "nothing draining it" : `drains in ${fmt(s.scale.drain_seconds)} s; workers wanted: ${fmt(s.scale.desired_workers)}`;
  const t = n.totals;
  $("#queue-time").textContent = `${ms(t.queue_p50_ms)} / ${ms(t.queue_p99_ms)}`;
  $("#handler-time").textContent = `${ms(t.handler_p50_ms)} / ${ms(t.handler_p99_ms)}`;
  rows($("#lanes tbody"), n.lanes, (lane) => el("tr", { "data-lane": lane.priority },
    el("td", {}, String(lane.priority)),
    el("td", { class: "depth" }, `${fmt(lane.depth)} / ${fmt(lane.capacity)}`),
    el("td", {}, el("div", { class: "bar" }, (() => { const i = el("i"); const share = lane.capacity ? lane.depth / lane.capacity : 0; i.style.width = `${Math.min(100, share * 100)}%`; i.className = share >= 0.8 ? "bad" : share >= 0.5 ? "warn" : ""; return i; })()))));
  const totals = [["received", t.received], ["acked", t.acked], ["retried", t.retried], ["dead-lettered", t.dead_lettered], ["dropped or deferred", t.dropped]];
  rows($("#totals tbody"), totals, ([name, value]) => el("tr", { "data-total": name }, el("th", {}, name), el("td", {}, fmt(value))));
}

function renderHistory(s) {
  const h = s.history;
  const times = h.map((p) => p.at_ms);
  chart($("#chart-rates"), $("#legend-rates"), times, [
    { name: "received", color: "#5aa9e6", values: rate(h, "received") },
    { name: "acked", color: "#3fb68b", values: rate(h, "acked") },
    { name: "retried", color: "#e0a33a", values: rate(h, "retried") },
    { name: "dead-lettered", color: "#e5534b", values: rate(h, "dead_lettered") },
    { name: "dropped", color: "#b07cd8", values: rate(h, "dropped") },
  ]);
  chart($("#chart-limits"), $("#legend-limits"), times, [
    { name: "prefetch", color: "#5aa9e6", values: h.map((p) => p.prefetch) },
    { name: "held", color: "#e0a33a", values: h.map((p) => p.held) },
    { name: "limit", color: "#3fb68b", values: h.map((p) => p.limit) },
    { name: "running", color: "#b07cd8", values: h.map((p) => p.running) },
  ]);
  chart($("#chart-latency"), $("#legend-latency"), times, [
    { name: "queue p50", color: "#5aa9e6", values: h.map((p) => p.queue_p50_ms) },
    { name: "queue p99", color: "#2f6fa3", values: h.map((p) => p.queue_p99_ms) },
    { name: "handler p50", color: "#3fb68b", values: h.map((p) => p.handler_p50_ms) },
    { name: "handler p99", color: "#e5534b", values: h.map((p) => p.handler_p99_ms) },
  ]);
}

function renderBroker(s) {
  const now = Date.now();
  $("#breaker-detail").textContent = `${s.now.breaker}; opened ${fmt(s.now.breaker_opened)} times`;
  rows($("#openings"), s.breaker_openings, (at) => el("li", {}, `opened ${age(now - at)}`));
  const b = s.broker;
  $("#broker-detail").textContent = b.kind === "kafka"
    ? `${b.partitions.length} partitions assigned, ${b.partitions_held_back} held back at their share of the prefetch`
    : `${b.reconnects} reconnects`;
  $("#partitions").hidden = b.partitions.length === 0;
  rows($("#partitions tbody"), b.partitions, (p) => el("tr", { "data-partition": `${p.topic}[${p.partition}]` },
    el("td", {}, `${p.topic}[${p.partition}]`), el("td", {}, fmt(p.lag)),
    el("td", { class: p.held_back ? "held" : "muted" }, p.held_back ? "held back" : "read")));
  $("#queues").hidden = b.queues.length === 0;
  rows($("#queues tbody"), b.queues, (q) => el("tr", { "data-queue": q.queue }, el("td", {}, q.queue), el("td", {}, fmt(q.ready))));
  rows($("#recent-dead-letters tbody"), s.dead_letters.slice(0, 10), (d) => el("tr", {},
    el("td", {}, age(now - d.at_ms)), el("td", {}, d.origin), el("td", { class: "reason" }, d.reason)));
}

async function poll() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    const s = await response.json();
    renderNow(s);
    renderHistory(s);
    renderBroker(s);
    dlqQueues = s.console.dead_letter_queues;
    $("#dlq").hidden = dlqQueues.length === 0;
    $("#token").disabled = !s.console.can_redrive;
    if (!s.console.can_redrive) $("#token").placeholder = "read-only: no SLUICEGATE_CONSOLE_TOKEN on this worker";
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}${s.console.redrive_running ? " · a redrive is running" : ""}`;
  } catch (e) {
    $("#updated").textContent = `cannot reach the worker: ${e}`;
  }
}

function notice(text, ok) {
  const node = $("#notice");
  node.textContent = text;
  node.className = ok ? "ok" : "bad";
}

async function redrive(queue, ids) {
  const body = ids ? { queue, ids } : { queue, all: true };
  const headers = { "Content-Type": "application/json" };
  const token = $("#token").value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch("/status/redrive", { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await response.json().catch(() => ({}));
  if (response.ok) notice(answer.report ?? "redrive started", true);
  else notice(`${response.status}: ${answer.error ?? response.statusText}`, false);
  await pollDeadLetters();
}

async function pollDeadLetters() {
  const parts = [];
  for (const queue of dlqQueues) {
    const response = await fetch(`/status/dead-letters.json?queue=${encodeURIComponent(queue)}&limit=50`, { cache: "no-store" });
    const answer = await response.json().catch(() => ({ letters: [] }));
    const letters = answer.letters ?? [];
    const all = el("button", { class: "redrive-all", onclick: () => redrive(queue, null) }, "Redrive all");
    const head = el("div", { class: "dlq-head" }, el("strong", {}, `${queue}: ${letters.length}${letters.length === 50 ? "+" : ""} waiting`), all);
    const table = el("table", { class: "dead-letters", "data-queue": queue },
      el("thead", {}, el("tr", {}, ...["Id", "Age", "Attempt", "Redrives", "Origin", "Reason", ""].map((t) => el("th", {}, t)))),
      el("tbody", {}, ...letters.map((l) => el("tr", { "data-id": l.id },
        el("td", {}, l.id), el("td", {}, l.age_ms === null ? "?" : age(l.age_ms)), el("td", {}, String(l.attempt)),
        el("td", {}, String(l.redrives)), el("td", {}, l.origin ?? "-"), el("td", { class: "reason" }, l.reason),
        el("td", {}, el("button", { class: "redrive", onclick: () => redrive(queue, [l.id]) }, "Redrive"))))));
    parts.push(head, table);
  }
  $("#dlq-queues").replaceChildren(...parts);
}

poll();
setInterval(poll, POLL_MS);
setTimeout(function loop() {
  pollDeadLetters().finally(() => setTimeout(loop, DLQ_POLL_MS));
}, 300);
