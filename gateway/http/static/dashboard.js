// Polls /admin/dashboard/data every 2 s and draws it. The gateway keeps the last hour of
// history (so a reload keeps the charts) and computes the window every tile shows; the page
// shows those numbers as they are, so it always agrees with the data endpoint.
import { barChart, colorFor, html, lineChart } from "./charts.js";
import { renderLearned } from "./learned.js";

const POLL_MS = 2000;
const KEEP_S = 3600;
const RATE_S = 10;     // each point of the request-rate chart: the last 10 s before it
const ROLLING_S = 30;  // each point of the latency and cache charts: the last 30 s before it

const state = { history: [], last: null, window: 300, polls: 0, failures: 0, timer: null,
  busy: false, again: false };
const WINDOW_TEXT = { 300: "last 5 min", 900: "last 15 min", 3600: "last hour" };

// ---- formatting -----------------------------------------------------------------------------
const fmt = {
  rate: (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)),
  secs: (v) => {
    if (v === null || v === undefined) return "–";
    if (v >= 1) return `${Number(v.toFixed(2))} s`;
    const ms = v * 1000;
    return `${Number(ms.toFixed(ms >= 10 ? 0 : ms >= 1 ? 1 : 2))} ms`;
  },
  usd: (v) => (v === 0 ? "$0" : v >= 100 ? `$${v.toFixed(0)}` : v >= 1 ? `$${v.toFixed(2)}`
    : `$${Number(v.toPrecision(2))}`),
  pct: (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(v === 1 ? 0 : 1)}%`),
  count: (v) => (v >= 1e6 ? `${(v / 1e6).toFixed(1)}M` : v >= 1e4 ? `${(v / 1e3).toFixed(1)}k`
    : String(Math.round(v))),
  tick: (v) => String(Number(v.toFixed(3))),
  score: (v) => v.toFixed(2),
};
const TEAM_NAMES = { none: "(no team)", other: "(teams not in config)" };
const teamName = (t) => TEAM_NAMES[t] || t;
const BREAKER_TEXT = { closed: "closed", half_open: "half-open", open: "open" };

// ---- history --------------------------------------------------------------------------------
// One record per point of the gateway's history (cumulative counters at one moment).
function record(point) {
  return {
    t: point.t, total: point.requests, errors: point.errors,
    les: point.latency.map(([le]) => (le === null ? Infinity : le)),
    counts: point.latency.map(([, n]) => n), overhead: point.overhead.map(([, n]) => n),
    hit: point.cache_hits, lookups: point.cache_lookups,
    spendTeam: point.spend_by_team, spendModel: point.spend_by_model,
  };
}

function remember(rec) {
  const prev = state.history[state.history.length - 1];
  if (prev && rec.t <= prev.t) return;
  if (prev && rec.total < prev.total) state.history = [];  // another process, restarted
  state.history.push(rec);
  while (state.history.length && state.history[0].t < rec.t - KEEP_S) state.history.shift();
}

// The record at least `seconds` before history[i] (or the oldest one), never history[i] itself.
function before(i, seconds) {
  const h = state.history;
  let j = i - 1;
  while (j > 0 && h[j].t > h[i].t - seconds) j--;
  return j >= 0 ? h[j] : null;
}

function quantile(q, les, counts) {
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (let k = 0; k < les.length; k++) {
    if (counts[k] >= rank) {
      if (les[k] === Infinity) return lower;
      const inside = counts[k] - below;
      return lower + (les[k] - lower) * (inside ? (rank - below) / inside : 1);
    }
    lower = les[k]; below = counts[k];
  }
  return lower;
}

// The charts' points inside the window [t0, now] (each from the records before it).
function series(t0) {
  const h = state.history, rate = [], p50 = [], p95 = [], cache = [], errors = [], ovh = [];
  for (let i = 0; i < h.length; i++) {
    const cur = h[i];
    if (cur.t < t0) continue;
    const r = before(i, RATE_S);
    if (r) {
      const dt = cur.t - r.t;
      rate.push([cur.t, (cur.total - r.total) / dt]);
      errors.push([cur.t, (cur.errors - r.errors) / dt]);
    }
    const w = before(i, ROLLING_S);
    if (w && (w.les.length === cur.les.length || !w.les.length)) {
      const diff = cur.counts.map((n, k) => n - (w.counts[k] || 0));
      p50.push([cur.t, quantile(0.5, cur.les, diff)]);
      p95.push([cur.t, quantile(0.95, cur.les, diff)]);
      if (cur.overhead.length === cur.les.length) {
        ovh.push([cur.t, quantile(0.95, cur.les, cur.overhead.map((n, k) => n - (w.overhead[k] || 0)))]);
      }
      const looked = cur.lookups - w.lookups;
      cache.push([cur.t, looked > 0 ? (cur.hit - w.hit) / looked : null]);
    }
  }
  return { rate, errors, p50, p95, cache, ovh };
}

function spendSeries(field, t0, rename) {
  const shown = state.history.filter((r) => r.t >= t0);
  const names = new Set(shown.flatMap((r) => Object.keys(r[field])));
  return [...names].map((name) => ({
    name: rename ? rename(name) : name, color: colorFor(`${field}:${name}`),
    points: shown.map((r) => [r.t, r[field][name] ?? 0]),
  })).sort((a, b) => b.points[b.points.length - 1][1] - a.points[a.points.length - 1][1]);
}

// ---- rendering ------------------------------------------------------------------------------
// A tile: its value as shown, the raw number behind it (data-value), a note, a tone.
function kpi(id, value, raw, note, tone) {
  const el = document.getElementById(id);
  el.querySelector("b").textContent = value;
  el.dataset.value = raw === null || raw === undefined ? "" : String(raw);
  if (note !== undefined) el.querySelector("small").textContent = note;
  el.dataset.tone = tone || "";
}

function rows(obj, label = (k) => k) {
  return Object.entries(obj || {}).map(([k, v]) => ({ label: label(k), value: v }));
}

function render() {
  const snap = state.last;
  if (!snap) return;
  // Every tile and chart covers the chosen window, as the gateway computed it for the tiles.
  const now = snap.server_time, w = snap.window, t0 = now - state.window;
  const span = w.from_start ? "since start" : WINDOW_TEXT[state.window];
  const s = series(t0);
  // The time axis: the window, or only the history there is in it (at least a minute).
  const first = state.history.length ? state.history[0].t : now;
  const axis0 = Math.max(t0, Math.min(first, now - 60));

  kpi("kpi-rate", w.rate_per_s === null ? "–" : fmt.rate(w.rate_per_s), w.rate_per_s,
    `${fmt.count(w.requests)} requests · ${span}`);
  const p95 = w.p95_s;
  kpi("kpi-p95", fmt.secs(p95), p95, w.requests ? `p50 ${fmt.secs(w.p50_s)} · ${span}` : `no requests · ${span}`,
    p95 > 5 ? "bad" : p95 > 1 ? "warn" : "");
  kpi("kpi-spend", fmt.usd(w.spend_usd), w.spend_usd, `${fmt.count(w.tokens)} tokens · ${span}`);
  kpi("kpi-cache", fmt.pct(w.cache_hit_rate), w.cache_hit_rate,
    `${fmt.count(w.cache_hits)} hits of ${fmt.count(w.cache_lookups)} lookups · ${span}`);
  kpi("kpi-errors", fmt.pct(w.error_share), w.error_share,
    `${fmt.count(w.errors)} errors · ${fmt.count(w.rejected)} refused · ${span}`,
    w.error_share > 0.05 ? "bad" : w.error_share > 0 ? "warn" : "");
  const open = snap.deployments.filter((d) => d.breaker !== "closed");
  kpi("kpi-breakers", `${open.length} / ${snap.deployments.length}`, open.length,
    open.length ? open.map((d) => d.id).join(", ") : "all closed · now", open.length ? "bad" : "good");
  kpi("kpi-reviews", String(snap.reviews.pending), snap.reviews.pending, "held answers · now",
    snap.reviews.pending ? "warn" : "");
  renderTotals(snap);

  lineChart(document.getElementById("chart-rate"), {
    t0: axis0, t1: now, format: fmt.rate, tick: fmt.tick, area: true, series: [
      { name: "all requests", color: "#4e9af1", points: s.rate },
      { name: "5xx errors", color: "#e5484d", points: s.errors }] });
  lineChart(document.getElementById("chart-latency"), {
    t0: axis0, t1: now, format: fmt.secs, empty: `No requests in the ${WINDOW_TEXT[state.window]}`, series: [
      { name: "p50", color: "#2bc48a", points: s.p50 },
      { name: "p95", color: "#f5a524", points: s.p95 },
      { name: "gateway overhead p95", color: "#a77bf3", points: s.ovh, dashed: true }] });
  lineChart(document.getElementById("chart-spend-team"), {
    t0: axis0, t1: now, format: fmt.usd, series: spendSeries("spendTeam", t0, teamName), empty: "No spend yet" });
  lineChart(document.getElementById("chart-spend-model"), {
    t0: axis0, t1: now, format: fmt.usd, series: spendSeries("spendModel", t0), empty: "No spend yet" });
  lineChart(document.getElementById("chart-cache"), {
    t0: axis0, t1: now, format: fmt.pct, tick: (v) => `${Math.round(v * 100)}%`, yMax: 1, area: true, empty: `No cache lookups in the ${WINDOW_TEXT[state.window]}`,
    series: [{ name: "hit rate", color: "#2fc1d6", points: s.cache }] });

  barChart(document.getElementById("bars-rules"), rows(snap.requests.by_route),
    { format: fmt.count, empty: "No routed requests yet." });
  barChart(document.getElementById("bars-deployments"), rows(snap.requests.by_deployment),
    { format: fmt.count, empty: "No deployment has answered yet." });
  // Escalated requests (answered by a later deployment because a check failed), of the rule's.
  barChart(document.getElementById("bars-escalations"), rows(snap.escalations).map((r) => ({
    ...r, note: `of ${fmt.count(snap.requests.by_route[r.label] || 0)} requests` })),
  { format: fmt.count, empty: "No request has escalated." });
  barChart(document.getElementById("bars-rejections"), rows(snap.rejections).map((r) => ({ ...r, color: "#f5a524" })),
    { format: fmt.count, empty: "Nothing refused." });
  // Scores run from 0 (bad) to 1 (good): a full bar is a perfect mean, coloured by how good.
  const feedbackRows = (obj) => Object.entries(obj || {}).map(([k, f]) => ({
    label: k, value: f.mean, note: `(${fmt.count(f.count)})`,
    color: f.mean >= 0.75 ? "#2bc48a" : f.mean >= 0.5 ? "#f5a524" : "#e5484d" }))
    .sort((a, b) => a.value - b.value);
  const feedbackOpts = { format: fmt.score, scale: 1, keepZero: true,
    empty: "No feedback yet (POST /v1/feedback)." };
  barChart(document.getElementById("bars-feedback-deployment"), feedbackRows(snap.feedback.by_deployment), feedbackOpts);
  barChart(document.getElementById("bars-feedback-rule"), feedbackRows(snap.feedback.by_route), feedbackOpts);
  renderHealth(snap.deployments);
  renderReviews(snap.reviews, now);
  renderLearned(document.getElementById("learned"), snap.learned);
}

// Since the process (or pool) started: the counters /metrics reports.
function renderTotals(snap) {
  const el = document.getElementById("totals");
  const spent = Object.values(snap.spend.by_team).reduce((a, b) => a + b, 0);
  const items = [
    ["requests", snap.requests.total, fmt.count, "requests"],
    ["hits", snap.cache.hit || 0, fmt.count, "cache hits"],
    ["escalated", Object.values(snap.escalations).reduce((a, b) => a + b, 0), fmt.count, "escalated"],
    ["refused", snap.requests.rejected, fmt.count, "refused"],
    ["spend", spent, fmt.usd, "spent"],
  ];
  el.replaceChildren();
  html("span", "muted", "Since start: ", el);
  for (const [key, value, format, label] of items) {
    const item = html("span", "total", null, el);
    item.dataset.total = key;
    item.dataset.value = String(value);
    html("b", null, format(value), item);
    html("span", "muted", ` ${label} `, item);
  }
}

function renderHealth(deployments) {
  const el = document.getElementById("health");
  el.replaceChildren();
  el.dataset.rows = String(deployments.length);
  const head = html("div", "health-row head", null, el);
  for (const h of ["deployment", "breaker", "latency", "answered", "failed"]) html("span", null, h, head);
  for (const d of deployments) {
    const row = html("div", `health-row ${d.breaker}`, null, el);
    row.dataset.deployment = d.id;
    row.dataset.breaker = d.breaker;
    const name = html("span", "dep", null, row);
    html("b", null, d.id, name);
    html("small", "muted", ` ${d.group}`, name);
    const pill = html("span", `pill ${d.breaker}`, BREAKER_TEXT[d.breaker] || d.breaker, html("span", null, null, row));
    if (d.breaker === "open" && d.retry_in_s > 0) pill.textContent += ` · probe in ${Math.ceil(d.retry_in_s)}s`;
    else if (d.consecutive_failures) pill.textContent += ` · ${d.consecutive_failures} failing`;
    html("span", "num", fmt.secs(d.latency_s ?? d.mean_upstream_s), row);
    html("span", "num", fmt.count(d.requests), row);
    html("span", `num${d.failed_attempts ? " warn" : ""}`, fmt.count(d.failed_attempts), row);
  }
}

function renderReviews(reviews, now) {
  const el = document.getElementById("reviews");
  el.replaceChildren();
  const big = html("div", `big-number${reviews.pending ? " warn" : ""}`, String(reviews.pending), el);
  big.id = "reviews-count";
  html("p", "muted", reviews.pending === 1 ? "answer waiting for a reviewer" : "answers waiting for a reviewer", el);
  const list = html("ul", "review-list", null, el);
  for (const r of reviews.oldest) {
    const item = html("li", null, null, list);
    const top = html("div", null, null, item);
    html("b", null, r.rule, top);
    const age = Math.max(0, now - r.created_at);
    html("small", "muted", ` ${age < 90 ? Math.round(age) + " s" : Math.round(age / 60) + " min"} ago`, top);
    html("div", "muted", `${r.team || "no team"} · ${r.model} · ${r.id}`, item);
  }
  if (reviews.pending > reviews.oldest.length) {
    html("p", "muted", `and ${reviews.pending - reviews.oldest.length} more — GET /admin/reviews`, el);
  }
}

// ---- polling --------------------------------------------------------------------------------
function setStatus(ok, text) {
  document.getElementById("live").className = ok ? "dot live" : "dot down";
  document.getElementById("status-text").textContent = text;
}

async function poll() {
  if (state.busy) { state.again = true; return; }  // a range change during a poll: poll again after
  state.busy = true;
  clearTimeout(state.timer);
  const first = state.polls === 0;
  try {
    const url = `/admin/dashboard/data?window=${state.window}${first ? "&history=1" : ""}`;
    const resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { window.location.assign("/dashboard"); return; }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const snap = await resp.json();
    if (snap.history) state.history = snap.history.map(record);
    state.last = snap;
    state.failures = 0;
    remember(record(snap.point));
    render();
    state.polls += 1;
    document.body.dataset.polls = String(state.polls);
    const who = snap.worker.index === null ? `pid ${snap.worker.pid}` : `worker ${snap.worker.index}, pid ${snap.worker.pid}`;
    document.body.dataset.pid = String(snap.worker.pid);
    document.body.dataset.window = String(snap.window.seconds);
    setStatus(true, `live · ${new Date(snap.server_time * 1000).toLocaleTimeString([], { hour12: false })} · ${who}`);
  } catch (err) {
    state.failures += 1;
    setStatus(false, `disconnected (${err.message || err}); retrying`);
  } finally {
    state.busy = false;
  }
  if (state.again) { state.again = false; poll(); return; }
  state.timer = setTimeout(poll, POLL_MS);
}

for (const button of document.querySelectorAll(".range button")) {
  button.addEventListener("click", () => {
    state.window = Number(button.dataset.window);
    for (const b of document.querySelectorAll(".range button")) b.classList.toggle("active", b === button);
    render();
    poll();  // the tiles' numbers for the new window come from the gateway
  });
}
let resizeQueued = false;
window.addEventListener("resize", () => {
  if (resizeQueued) return;
  resizeQueued = true;
  requestAnimationFrame(() => { resizeQueued = false; render(); });
});
poll();
