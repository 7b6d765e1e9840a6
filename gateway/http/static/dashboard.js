// Polls /admin/dashboard/data every 2 s, keeps the history in memory and draws it.
import { barChart, colorFor, html, lineChart } from "./charts.js";
import { renderLearned } from "./learned.js";

const POLL_MS = 2000;
const KEEP_S = 3600;
const RATE_S = 10;     // request rate over the last 10 s
const ROLLING_S = 30;  // latency percentiles and cache hit rate over the last 30 s

const state = { history: [], last: null, window: 300, polls: 0, failures: 0 };

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
function record(snap) {
  const lat = snap.latency.buckets;
  return {
    t: snap.server_time,
    total: snap.requests.total, errors: snap.requests.errors,
    les: lat.map(([le]) => (le === null ? Infinity : le)), counts: lat.map(([, n]) => n),
    overhead: snap.latency.overhead_buckets.map(([, n]) => n),
    hit: snap.cache.hit || 0, miss: snap.cache.miss || 0,
    spendTeam: snap.spend.by_team, spendModel: snap.spend.by_model,
  };
}

function remember(snap) {
  const rec = record(snap);
  const prev = state.history[state.history.length - 1];
  if (prev && (rec.total < prev.total || rec.t <= prev.t)) state.history = [];  // restarted
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

function series() {
  const h = state.history, rate = [], p50 = [], p95 = [], cache = [], errors = [], ovh = [];
  for (let i = 0; i < h.length; i++) {
    const cur = h[i];
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
      const looked = cur.hit + cur.miss - w.hit - w.miss;
      cache.push([cur.t, looked > 0 ? (cur.hit - w.hit) / looked : null]);
    }
  }
  return { rate, errors, p50, p95, cache, ovh };
}

function spendSeries(field, rename) {
  const names = new Set(state.history.flatMap((r) => Object.keys(r[field])));
  return [...names].map((name) => ({
    name: rename ? rename(name) : name, color: colorFor(`${field}:${name}`),
    points: state.history.map((r) => [r.t, r[field][name] ?? 0]),
  })).sort((a, b) => b.points[b.points.length - 1][1] - a.points[a.points.length - 1][1]);
}

// ---- rendering ------------------------------------------------------------------------------
function kpi(id, value, note, tone) {
  const el = document.getElementById(id);
  el.querySelector("b").textContent = value;
  if (note !== undefined) el.querySelector("small").textContent = note;
  el.dataset.tone = tone || "";
}

function rows(obj, label = (k) => k) {
  return Object.entries(obj || {}).map(([k, v]) => ({ label: label(k), value: v }));
}

function render() {
  const snap = state.last;
  if (!snap) return;
  // The time axis covers the window, or only the history there is (at least a minute).
  const now = snap.server_time, first = state.history.length ? state.history[0].t : now;
  const t0 = Math.max(now - state.window, Math.min(first, now - 60));
  const s = series();
  const latest = (pts) => { const p = [...pts].reverse().find((q) => q[1] !== null); return p ? p[1] : null; };

  const rate = latest(s.rate);
  kpi("kpi-rate", rate === null ? "–" : fmt.rate(rate), `${fmt.count(snap.requests.total)} requests since start`);
  const p95 = latest(s.p95) ?? snap.latency.p95_s;
  kpi("kpi-p95", fmt.secs(p95), `p50 ${fmt.secs(latest(s.p50) ?? snap.latency.p50_s)} · last 30 s`,
    p95 > 5 ? "bad" : p95 > 1 ? "warn" : "");
  const spent = Object.values(snap.spend.by_team).reduce((a, b) => a + b, 0);
  kpi("kpi-spend", fmt.usd(spent), `${fmt.count((snap.tokens.input || 0) + (snap.tokens.output || 0))} tokens since start`);
  const looked = (snap.cache.hit || 0) + (snap.cache.miss || 0);
  kpi("kpi-cache", looked ? fmt.pct(snap.cache.hit / looked) : "–", `${fmt.count(snap.cache.hit || 0)} hits of ${fmt.count(looked)} lookups`);
  const errShare = snap.requests.total ? snap.requests.errors / snap.requests.total : 0;
  kpi("kpi-errors", fmt.pct(errShare), `${fmt.count(snap.requests.errors)} errors · ${fmt.count(snap.requests.rejected)} refused (4xx)`,
    errShare > 0.05 ? "bad" : errShare > 0 ? "warn" : "");
  const open = snap.deployments.filter((d) => d.breaker !== "closed");
  kpi("kpi-breakers", `${open.length} / ${snap.deployments.length}`,
    open.length ? open.map((d) => d.id).join(", ") : "all closed", open.length ? "bad" : "good");
  kpi("kpi-reviews", String(snap.reviews.pending), "held answers", snap.reviews.pending ? "warn" : "");

  lineChart(document.getElementById("chart-rate"), {
    t0, t1: now, format: fmt.rate, tick: fmt.tick, area: true, series: [
      { name: "all requests", color: "#4e9af1", points: s.rate },
      { name: "5xx errors", color: "#e5484d", points: s.errors }] });
  lineChart(document.getElementById("chart-latency"), {
    t0, t1: now, format: fmt.secs, empty: "No requests in the last 30 s", series: [
      { name: "p50", color: "#2bc48a", points: s.p50 },
      { name: "p95", color: "#f5a524", points: s.p95 },
      { name: "gateway overhead p95", color: "#a77bf3", points: s.ovh, dashed: true }] });
  lineChart(document.getElementById("chart-spend-team"), {
    t0, t1: now, format: fmt.usd, series: spendSeries("spendTeam", teamName), empty: "No spend yet" });
  lineChart(document.getElementById("chart-spend-model"), {
    t0, t1: now, format: fmt.usd, series: spendSeries("spendModel"), empty: "No spend yet" });
  lineChart(document.getElementById("chart-cache"), {
    t0, t1: now, format: fmt.pct, tick: (v) => `${Math.round(v * 100)}%`, yMax: 1, area: true, empty: "No cache lookups in the last 30 s",
    series: [{ name: "hit rate", color: "#2fc1d6", points: s.cache }] });

  barChart(document.getElementById("bars-rules"), rows(snap.requests.by_route),
    { format: fmt.count, empty: "No routed requests yet." });
  barChart(document.getElementById("bars-deployments"), rows(snap.requests.by_deployment),
    { format: fmt.count, empty: "No deployment has answered yet." });
  barChart(document.getElementById("bars-escalations"), rows(snap.escalations).map((r) => ({
    ...r, note: snap.requests.by_route[r.label] ? `of ${fmt.count(snap.requests.by_route[r.label])} requests` : "" })),
  { format: fmt.count, empty: "No cascade has escalated." });
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
  try {
    const resp = await fetch("/admin/dashboard/data", { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { window.location.assign("/dashboard"); return; }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const snap = await resp.json();
    state.last = snap;
    state.failures = 0;
    remember(snap);
    render();
    state.polls += 1;
    document.body.dataset.polls = String(state.polls);
    setStatus(true, `live · ${new Date(snap.server_time * 1000).toLocaleTimeString([], { hour12: false })}`);
  } catch (err) {
    state.failures += 1;
    setStatus(false, `disconnected (${err.message || err}); retrying`);
  }
  setTimeout(poll, POLL_MS);
}

for (const button of document.querySelectorAll(".range button")) {
  button.addEventListener("click", () => {
    state.window = Number(button.dataset.window);
    for (const b of document.querySelectorAll(".range button")) b.classList.toggle("active", b === button);
    render();
  });
}
let resizeQueued = false;
window.addEventListener("resize", () => {
  if (resizeQueued) return;
  resizeQueued = true;
  requestAnimationFrame(() => { resizeQueued = false; render(); });
});
poll();
