// The tasks and workflows panel: per workflow, the KPIs of the tasks finished in the window the
// page shows (the gateway computes them from /metrics, as for every tile), and two charts over
// time: cost per task and failure rate, each point over the 5 minutes before it. Kept in its own
// module so the rest of the dashboard does not need to know it.
import { colorFor, html, lineChart } from "./charts.js";

const ROLLING_S = 300;
const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);
const usd = (v) => (v === null || v === undefined ? "–" : v === 0 ? "$0" : `$${Number(v.toPrecision(3))}`);
const secs = (v) => (v === null || v === undefined ? "–" : v >= 1 ? `${v.toFixed(1)} s` : `${Math.round(v * 1000)} ms`);
const count = (v) => String(Math.round(v * 10) / 10);

const COLUMNS = [
  ["tasks", "tasks", (w) => w.tasks, count],
  ["per_hour", "tasks / h", (w) => w.tasks_per_hour, (v) => (v === null ? "–" : v.toFixed(1))],
  ["cost_mean", "cost / task", (w) => w.cost_per_task_usd.mean, usd],
  ["cost_p95", "p95", (w) => w.cost_per_task_usd.p95, usd],
  ["failure_rate", "failed", (w) => w.failure_rate, pct],
  ["escalation_rate", "escalated", (w) => w.escalation_rate, pct],
  ["approval_rate", "approval", (w) => w.approval_rate, pct],
  ["resolution", "resolution", (w) => w.time_to_resolution_s, secs],
];

function renderTable(el, workflows) {
  el.replaceChildren();
  const names = Object.keys(workflows || {});
  el.dataset.rows = String(names.length);
  if (!names.length) {
    html("p", "empty-note", "No task finished in this window (x-podium-task, x-podium-workflow).", el);
    return;
  }
  const head = html("div", "wf-row head", null, el);
  html("span", null, "workflow", head);
  for (const [, title] of COLUMNS) html("span", null, title, head);
  for (const name of names) {
    const w = workflows[name];
    const row = html("div", "wf-row", null, el);
    row.dataset.workflow = name;
    const label = html("span", "dep", null, row);
    html("i", "swatch", null, label).style.background = colorFor(`workflow:${name}`);
    html("b", null, ` ${name}`, label);
    for (const [key, , get, format] of COLUMNS) {
      const value = get(w);
      const cell = html("span", `num${key === "failure_rate" && value > 0 ? " warn" : ""}`, format(value), row);
      cell.dataset.kpi = key;
      cell.dataset.value = value === null || value === undefined ? "" : String(value);
    }
  }
}

// Per workflow, [t, value] over the ROLLING_S before each point of the history.
function rolling(history, t0, value) {
  const names = new Set(history.flatMap((r) => Object.keys(r.workflows || {})));
  return [...names].map((name) => {
    const points = [];
    for (let i = 0; i < history.length; i++) {
      const cur = history[i];
      if (cur.t < t0) continue;
      let j = i - 1;
      while (j > 0 && history[j].t > cur.t - ROLLING_S) j--;
      const was = j >= 0 ? (history[j].workflows || {})[name] : null;
      const now = (cur.workflows || {})[name];
      if (!now) continue;
      const base = was || { tasks: 0, errors: 0, cost_usd: 0 };
      const tasks = now.tasks - base.tasks;
      points.push([cur.t, tasks > 0 ? value(now, base, tasks) : null]);
    }
    return { name, color: colorFor(`workflow:${name}`), points };
  });
}

export function renderWorkflows(snap, history, t0, t1) {
  renderTable(document.getElementById("workflows"), snap.window.workflows);
  lineChart(document.getElementById("chart-task-cost"), {
    t0, t1, format: usd, empty: "No finished tasks yet",
    series: rolling(history, t0, (now, was, n) => (now.cost_usd - was.cost_usd) / n) });
  lineChart(document.getElementById("chart-task-failures"), {
    t0, t1, format: pct, tick: (v) => `${Math.round(v * 100)}%`, yMax: 1, empty: "No finished tasks yet",
    series: rolling(history, t0, (now, was, n) => (now.errors - was.errors) / n) });
}
