// The Flywheel dashboard: polls the admin API and draws what it answers. No library, no
// build step; every chart is a small SVG drawn here.
"use strict";

const POLL_MS = 2000;
const HIDDEN_POLL_MS = 10000;
// Audit lines read per look (the newest; marks and the rollout come from them).
const AUDIT_LINES = 500;
const ARM_COLORS = { champion: "#2563eb", canary: "#d97706" };
const MARK_COLORS = { promote: "#16a34a", roll_back: "#dc2626", drift: "#ea580c" };
const ROLLOUT_ACTIONS = new Set([
  "swap", "set_weight", "advance", "await_approval", "approve", "promote", "roll_back", "reject", "pause", "resume",
]);

const $ = (id) => document.getElementById(id);
// The candidate an audit entry is about: a rollback is written from the candidate to the champion.
const subject = (e) => (e.action === "roll_back" ? e.from : e.to);
// What the page keeps at most (the server keeps at most 20000 points per model).
const MAX_POINTS = 20000;
const MAX_DRIFT_EVENTS = 1000;
const state = {
  token: null,
  model: null,
  points: [],
  lastPointMs: 0,
  driftNext: 0,
  driftEvents: [],
  audit: [],
  runs: [],
  routing: null,
  polls: 0,
};

// A credential comes in the address's fragment (never sent to the server, never in its logs)
// or from the form, and is kept for this tab only.
function readToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem("flywheel-token", fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem("flywheel-token");
}

class Refused extends Error {}

async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    throw new Refused(`${response.status}: ${(await response.json().catch(() => ({}))).error || "refused"}`);
  }
  if (!response.ok) {
    throw new Error(`${path}: ${response.status} ${(await response.json().catch(() => ({}))).error || ""}`);
  }
  return response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

const fmt = {
  num: (v, digits = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits)),
  pct: (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`),
  ms: (us) => (us === null || us === undefined ? "–" : `${(us / 1000).toFixed(2)} ms`),
  time: (ms) => new Date(ms).toLocaleTimeString([], { hour12: false }),
  when: (iso) => (iso ? new Date(iso).toLocaleString([], { hour12: false }) : "–"),
};

// ---- charts ----

// Draws `series` ([{name, color, dash, values: [[ms, y|null]]}]) over [from, to] with vertical
// `marks` ([{ms, color, label}]). Gaps (null) break the line.
// A `timeline` has no y axis: marks on the time axis only.
function lineChart(container, series, marks, { from, to, yMin, yMax, format = (v) => fmt.num(v, 2), timeline = false }) {
  const width = Math.max(container.clientWidth, 200);
  const height = Math.max(container.clientHeight, 60);
  const pad = { left: 44, right: 24, top: 8, bottom: 18 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  const values = series.flatMap((s) => s.values.map((p) => p[1]).filter((v) => v !== null && Number.isFinite(v)));
  let lo = yMin !== undefined ? yMin : Math.min(0, ...values);
  let hi = yMax !== undefined ? yMax : Math.max(...values, lo + 1e-9);
  if (yMax === undefined && values.length) hi = hi + (hi - lo) * 0.08;
  if (hi <= lo) hi = lo + 1;
  const x = (ms) => pad.left + ((ms - from) / Math.max(to - from, 1)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - ((v - lo) / (hi - lo)) * (height - pad.top - pad.bottom);
  root.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: y(lo), y2: y(lo) }));
  for (const tick of timeline ? [] : [lo, (lo + hi) / 2, hi]) {
    const label = svg("text", { x: pad.left - 4, y: y(tick) + 3, "text-anchor": "end" });
    label.textContent = format(tick);
    root.append(label);
  }
  for (const at of [from, (from + to) / 2, to]) {
    const label = svg("text", { x: x(at), y: height - 4, "text-anchor": "middle" });
    label.textContent = fmt.time(at);
    root.append(label);
  }
  for (const mark of marks) {
    if (mark.ms < from || mark.ms > to) continue;
    const line = svg("line", {
      x1: x(mark.ms), x2: x(mark.ms), y1: pad.top, y2: height - pad.bottom,
      stroke: mark.color, "stroke-width": 1.5, "stroke-dasharray": "3 2", class: `mark ${mark.kind}`,
    });
    const title = svg("title");
    title.textContent = mark.label;
    line.append(title);
    root.append(line);
  }
  let drawn = 0;
  for (const s of series) {
    let path = "";
    let pen = false;
    for (const [ms, v] of s.values) {
      if (v === null || !Number.isFinite(v)) { pen = false; continue; }
      path += `${pen ? "L" : "M"}${x(ms).toFixed(1)},${y(Math.min(Math.max(v, lo), hi)).toFixed(1)} `;
      pen = true;
      drawn += 1;
    }
    if (path) {
      root.append(svg("path", {
        d: path, fill: "none", stroke: s.color, "stroke-width": 1.6, "stroke-dasharray": s.dash || "",
        class: "series", "data-name": s.name,
      }));
    }
  }
  let legendX = pad.left + 4;
  for (const s of series) {
    const label = svg("text", { x: legendX, y: pad.top + 8, class: "legend", fill: s.color });
    label.textContent = s.name;
    root.append(label);
    legendX += 8 + s.name.length * 6;
  }
  if (!drawn && !timeline) {
    const empty = svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" });
    empty.textContent = "no data yet";
    root.append(empty);
  }
  container.dataset.points = String(drawn);
  container.replaceChildren(root);
}

function armSeries(pick, { dashFor } = {}) {
  const names = new Set(state.points.flatMap((p) => Object.keys(p.arms)));
  const out = [];
  for (const arm of ["champion", "canary"].filter((a) => names.has(a))) {
    for (const [label, getter, dash] of pick) {
      out.push({
        name: pick.length > 1 ? `${arm} ${label}` : arm,
        color: ARM_COLORS[arm],
        dash: dash || (dashFor ? dashFor(arm) : ""),
        values: state.points.map((p) => [p.time_ms, p.arms[arm] ? getter(p.arms[arm]) : null]),
      });
    }
  }
  return out;
}

function decisionMarks(withDrift) {
  const marks = state.audit
    .filter((e) => e.action === "promote" || e.action === "roll_back")
    .map((e) => ({
      ms: Date.parse(e.time), color: MARK_COLORS[e.action], kind: e.action,
      label: `${e.action} v${subject(e) ?? "?"} (${e.actor}) ${e.reason || ""}`,
    }));
  if (withDrift) {
    for (const event of state.driftEvents) {
      marks.push({
        ms: Date.parse(event.time), color: MARK_COLORS.drift, kind: "drift",
        label: `drift: ${event.detector} on ${event.feature} (${fmt.num(event.statistic)} > ${fmt.num(event.threshold)})`,
      });
    }
  }
  return marks;
}

function drawCharts() {
  const now = Date.now();
  const first = state.points.length ? state.points[0].time_ms : now - 60000;
  const span = { from: Math.min(first, now - 60000), to: now };
  $("history-span").textContent = state.points.length
    ? `(${state.points.length} points since ${fmt.time(first)})` : "";
  const marks = decisionMarks(false);
  const withDrift = decisionMarks(true);
  lineChart($("chart-rate"), armSeries([["rate", (a) => a.rate]]), marks, { ...span, format: (v) => fmt.num(v, 0) });
  lineChart($("chart-latency"), armSeries([
    ["p50", (a) => (a.p50_us === null ? null : a.p50_us / 1000), ""],
    ["p99", (a) => (a.p99_us === null ? null : a.p99_us / 1000), "4 3"],
  ]), marks, { ...span, format: (v) => fmt.num(v, 1) });
  lineChart($("chart-errors"), armSeries([["errors", (a) => a.error_rate]]), marks,
    { ...span, yMax: Math.max(0.05, ...state.points.flatMap((p) => Object.values(p.arms).map((a) => a.error_rate || 0))), format: fmt.pct });
  const quality = (key) => armSeries([[key, (a) => (a.quality ? a.quality[key] : null)]]);
  lineChart($("chart-auc"), quality("auc"), withDrift, { ...span, yMin: 0.5, yMax: 1.0 });
  lineChart($("chart-logloss"), quality("log_loss"), withDrift, span);
  lineChart($("chart-ece"), quality("ece"), withDrift, { ...span, yMin: 0 });
  // The drift timeline: one tick per event on the same time axis.
  lineChart($("drift-timeline"), [], withDrift, { ...span, timeline: true });
}

// ---- panels ----

function drawRouting(routing) {
  const model = routing.models.find((m) => m.name === state.model);
  if (!model) return;
  $("champion").textContent = `version ${model.champion}`;
  $("champion").dataset.version = String(model.champion);
  $("canary").textContent = model.canary ? `version ${model.canary.version} at ${model.canary.weight}%` : "none";
  $("canary").dataset.weight = model.canary ? String(model.canary.weight) : "";
  $("shadow").textContent = model.shadow
    ? `version ${model.shadow.version}, ${(model.shadow.fraction * 100).toFixed(0)}% mirrored` : "none";
  const waits = model.awaiting_approval ? `awaiting approval since ${model.awaiting_approval}` : null;
  $("rollout-state").textContent = model.paused ? "paused" : waits || (model.canary ? "in progress" : "idle");
  const last = routing.last_reload || {};
  const restart = (last.restart_required || []).length ? `; restart needed for ${last.restart_required.join(", ")}` : "";
  $("last-reload").textContent = last.at
    ? `${fmt.when(last.at)}: ${last.error ? `refused (${last.error})` : "applied"}${restart}` : "–";
  const rows = model.versions.map((v) => {
    const roles = [v.version === model.champion ? "champion" : null,
      model.canary && v.version === model.canary.version ? "canary" : null,
      model.shadow && v.version === model.shadow.version ? "shadow" : null].filter(Boolean).join(", ");
    return el("tr", {}, el("td", {}, `v${v.version}`), el("td", {}, `${v.state}${roles ? ` (${roles})` : ""}`),
      el("td", { class: "num" }, v.queue_depth), el("td", {}, v.signed_by || "–"),
      el("td", { class: "mono", title: v.sha256 }, (v.sha256 || "").slice(0, 12)));
  });
  for (const d of routing.draining.filter((d) => d.model === state.model)) {
    rows.push(el("tr", {}, el("td", {}, `v${d.version}`), el("td", {}, "draining"), el("td"), el("td"), el("td")));
  }
  for (const r of ((last.report || {}).rejected || []).filter((r) => r.model === state.model)) {
    rows.push(el("tr", {}, el("td", {}, r.version === null ? "–" : `v${r.version}`),
      el("td", { class: "reason" }, `rejected: ${r.reason || ""}`), el("td"), el("td"), el("td")));
  }
  $("versions").tBodies[0].replaceChildren(...rows);
  const e = model.evidence || {};
  const arm = (name, s) => (s && s.requests !== undefined
    ? `${name}: ${s.requests} req, errors ${fmt.pct(s.error_rate)}, p99 ${fmt.ms(s.p99_us)}` : null);
  const shadow = e.shadow && e.shadow.pairs ? `shadow: ${e.shadow.pairs} pairs, disagreement ${fmt.pct(e.shadow.disagreement_rate)}` : null;
  const labelled = e.labelled ? `labelled: champion ${e.labelled.champion}, canary ${e.labelled.canary}` : null;
  const parts = [model.canary ? `step at ${model.canary.weight}%` : "no canary step", arm("champion", e.champion),
    model.canary ? arm("canary", e.canary) : null, shadow, model.canary ? labelled : null].filter(Boolean);
  $("current-step").replaceChildren(el("strong", {}, "this step: "), parts.join(" · "));
}

// The rollout's steps: the audit entries about the current (or last) candidate, newest first.
function drawRollout() {
  const entries = state.audit.filter((e) => ROLLOUT_ACTIONS.has(e.action) || e.action.endsWith("_conflict") || e.action.endsWith("_failed"));
  const model = state.routing && state.routing.models.find((m) => m.name === state.model);
  const decided = entries.filter((e) => e.action === "promote" || e.action === "roll_back" || e.action === "reject").at(-1);
  const candidate = model && model.canary ? model.canary.version : decided && subject(decided);
  const steps = entries.filter((e) => candidate === undefined || subject(e) === candidate);
  const items = steps.slice().reverse().map((e) => {
    const verdict = e.action === "advance" ? "passed" : (e.action === "roll_back" ? "failed" : e.action);
    return el("li", { class: verdict, "data-action": e.action },
      el("div", {}, el("span", { class: `badge ${e.action}` }, e.action), " ",
        el("span", { class: "muted" }, `${fmt.when(e.time)} · ${e.actor}${e.credential ? ` (${e.credential})` : ""}`),
        e.from !== null && e.from !== undefined ? ` v${e.from} → v${e.to}` : (e.to !== null && e.to !== undefined ? ` v${e.to}` : "")),
      el("div", { class: "reason" }, e.reason || ""));
  });
  if (!items.length) items.push(el("li", { class: "muted" }, "no rollout yet"));
  $("rollout-timeline").replaceChildren(...items);
}

function drawDrift(window) {
  $("drift-count").textContent = `(${state.driftEvents.length})`;
  const events = state.driftEvents.slice(-50).reverse().map((e) => el("li", { "data-feature": e.feature },
    el("div", {}, el("span", { class: "badge tripped" }, e.detector), " ", el("strong", {}, e.feature), " ",
      el("span", { class: "muted" }, `${fmt.when(e.time)} · v${e.version}`)),
    el("div", { class: "reason" }, `statistic ${fmt.num(e.statistic)} vs threshold ${fmt.num(e.threshold)} over ${e.window_rows} rows`)));
  if (!events.length) events.push(el("li", { class: "muted" }, "no drift event"));
  $("drift-events").replaceChildren(...events);
  if (!window) {
    $("drift-window").textContent = "(no window closed yet)";
    $("drift-features").tBodies[0].replaceChildren();
    return;
  }
  $("drift-window").textContent = `(v${window.version}, ${window.rows} rows, closed ${fmt.time(window.time_ms)})`;
  const maxPsi = Math.max(0.25, ...window.features.map((f) => f.psi));
  // The feature that moved most, highlighted once its PSI reaches the usual "shift" level.
  const most = window.features.reduce((best, f) => (f.psi > (best ? best.psi : -1) ? f : best), null);
  const moved = most && most.psi >= 0.1 ? most : null;
  const rows = window.features.map((f) => {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${Math.min(100, (f.psi / maxPsi) * 100).toFixed(1)}%`;
    return el("tr", { class: f.tripped || f === moved ? "moved" : "" },
      el("td", {}, f.feature), el("td", { class: "num" }, fmt.num(f.psi)), el("td", {}, bar),
      el("td", { class: "num" }, fmt.num(f.ks)), el("td", { class: "num" }, f.ks_p_value < 1e-4 ? f.ks_p_value.toExponential(1) : fmt.num(f.ks_p_value, 4)),
      el("td", {}, f.tripped ? el("span", { class: "badge tripped" }, f.tripped) : ""));
  });
  $("drift-features").tBodies[0].replaceChildren(...rows);
}

function drawRuns() {
  const rows = state.runs.slice().reverse().map((r) => {
    const verdict = (r.gate || {}).verdict || {};
    const event = (r.trigger || {}).drift_event;
    const training = r.training || {};
    const gate = verdict.passed === undefined ? (r.reasons || []).join("; ")
      : `${verdict.passed ? "passed" : "refused"}: ${(verdict.reasons || []).join("; ")}`;
    return el("tr", {}, el("td", {}, fmt.when(r.time)), el("td", {}, el("span", { class: `badge ${r.outcome}` }, r.outcome)),
      el("td", {}, r.version ? `v${r.version} (champion v${r.champion})` : `champion v${r.champion ?? "?"}`),
      el("td", {}, event ? `${event.detector} on ${event.feature}` : ((r.trigger || {}).reason || "–")),
      el("td", { class: "num" }, (r.data || {}).rows ?? "–"),
      el("td", { class: "num" }, training.seconds !== undefined ? `${fmt.num(training.seconds, 1)} s` : "–"),
      el("td", {}, training.device || "–"), el("td", { class: "reason" }, gate));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no trainer run yet")));
  $("runs").tBodies[0].replaceChildren(...rows);
}

function fillOptions(select, values) {
  const chosen = select.value;
  const known = new Set([...select.options].map((o) => o.value));
  for (const v of values) if (!known.has(v)) select.append(el("option", { value: v }, v));
  select.value = chosen;
}

function drawAudit() {
  fillOptions($("audit-action"), [...new Set(state.audit.map((e) => e.action))].sort());
  fillOptions($("audit-actor"), [...new Set(state.audit.map((e) => e.actor))].sort());
  const text = $("audit-filter").value.toLowerCase();
  const action = $("audit-action").value;
  const actor = $("audit-actor").value;
  const rows = state.audit.slice().reverse()
    .filter((e) => (!action || e.action === action) && (!actor || e.actor === actor))
    .filter((e) => !text || JSON.stringify(e).toLowerCase().includes(text))
    .slice(0, 300)
    .map((e) => el("tr", { "data-action": e.action }, el("td", {}, fmt.when(e.time)), el("td", {}, e.actor),
      el("td", {}, el("span", { class: `badge ${e.action}` }, e.action)),
      el("td", {}, `${e.from ?? "–"} → ${e.to ?? "–"}`), el("td", {}, e.credential || ""),
      el("td", { class: "reason" }, e.reason || "")));
  $("audit").tBodies[0].replaceChildren(...rows);
}

// ---- polling ----

function switchModel(name) {
  state.model = name;
  Object.assign(state, { points: [], lastPointMs: 0, driftNext: 0, driftEvents: [], audit: [], runs: [] });
}

async function poll() {
  const routing = await api("/admin/routing");
  state.routing = routing;
  const names = routing.models.map((m) => m.name);
  fillOptions($("model"), names);
  if (!state.model || !names.includes(state.model)) {
    switchModel(names[0]);
    $("model").value = state.model || "";
  }
  if (!state.model) return;
  const asked = state.model;
  const model = encodeURIComponent(asked);
  const [history, drift, audit, runs] = await Promise.all([
    api(`/admin/history/${model}?since=${state.lastPointMs}`),
    api(`/admin/drift/${model}?since=${state.driftNext}`).catch(() => null),
    state.polls % 2 === 0 ? api(`/admin/audit?model=${model}&limit=${AUDIT_LINES}`).catch(() => null) : Promise.resolve(null),
    state.polls % 3 === 0 ? api(`/admin/runs/${model}`).catch(() => null) : Promise.resolve(null),
  ]);
  // The user picked another model while this poll was out: its answers are not that model's.
  if (state.model !== asked) return;
  state.points.push(...history.points);
  if (history.points.length) state.lastPointMs = history.points.at(-1).time_ms;
  state.points = state.points.slice(-MAX_POINTS);
  if (drift) {
    state.driftEvents.push(...drift.events);
    state.driftEvents = state.driftEvents.slice(-MAX_DRIFT_EVENTS);
    state.driftNext = drift.next;
  }
  if (audit) state.audit = audit.entries;
  if (runs) state.runs = runs.runs;
  state.polls += 1;
  drawRouting(routing);
  drawRollout();
  drawCharts();
  drawDrift(history.drift_window);
  drawRuns();
  drawAudit();
}

async function loop() {
  try {
    await poll();
    $("status").textContent = "live";
    $("status").className = "status ok";
    $("updated").textContent = `updated ${fmt.time(Date.now())}`;
    $("token-form").hidden = true;
    // Time from navigation to the first full picture (the figures script reads it).
    if (!document.body.dataset.firstRenderMs) document.body.dataset.firstRenderMs = String(Math.round(performance.now()));
  } catch (error) {
    $("status").textContent = error instanceof Refused ? "credential needed" : `not reachable: ${error.message}`;
    $("status").className = "status bad";
    if (error instanceof Refused) $("token-form").hidden = false;
  }
  setTimeout(loop, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
}

function start() {
  readToken();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("flywheel-token", state.token);
    $("token").value = "";
  });
  $("model").addEventListener("change", () => switchModel($("model").value));
  for (const id of ["audit-filter", "audit-action", "audit-actor"]) $(id).addEventListener("input", drawAudit);
  window.addEventListener("resize", () => drawCharts());
  loop();
}

start();
