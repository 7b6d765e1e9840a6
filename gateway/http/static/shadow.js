// The shadow trials panel: per rule and candidate, what `podium shadow report` prints (the
// gateway reads it from its store): agreement, check pass rates, cost and latency against the
// primary, error rate. Kept in its own module so the rest of the dashboard does not need to know it.
import { html } from "./charts.js";

const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);
const usd = (v) => (v === null || v === undefined ? "–" : v === 0 ? "$0" : `$${Number(v.toPrecision(3))}`);
const secs = (v) => (v === null || v === undefined ? "–" : v >= 1 ? `${v.toFixed(2)} s` : `${Math.round(v * 1000)} ms`);
const ratio = (v) => (v === null || v === undefined ? "" : ` (${v.toFixed(2)}×)`);

const COLUMNS = [
  ["trials", "trials", (r) => String(r.trials), (r) => r.trials],
  ["agreement_rate", "agree", (r) => pct(r.agreement_rate), (r) => r.agreement_rate],
  ["primary_pass_rate", "checks primary", (r) => pct(r.primary_pass_rate), (r) => r.primary_pass_rate],
  ["candidate_pass_rate", "checks candidate", (r) => pct(r.candidate_pass_rate), (r) => r.candidate_pass_rate],
  ["cost_ratio", "cost / trial", (r) => `${usd(r.candidate_cost_usd)} vs ${usd(r.primary_cost_usd)}${ratio(r.cost_ratio)}`, (r) => r.cost_ratio],
  ["latency_ratio", "latency", (r) => `${secs(r.candidate_latency_s)} vs ${secs(r.primary_latency_s)}${ratio(r.latency_ratio)}`, (r) => r.latency_ratio],
  ["error_rate", "errors", (r) => pct(r.error_rate), (r) => r.error_rate],
];

export function renderShadow(el, rows) {
  el.replaceChildren();
  el.dataset.rows = String((rows || []).length);
  if (!rows || !rows.length) {
    html("p", "empty-note", "No shadow trial yet (a routing rule's shadow: {group, share}).", el);
    return;
  }
  const head = html("div", "shadow-row head", null, el);
  html("span", null, "rule · candidate", head);
  for (const [, title] of COLUMNS) html("span", null, title, head);
  for (const r of rows) {
    const row = html("div", "shadow-row", null, el);
    row.dataset.rule = r.rule;
    row.dataset.candidate = r.candidate;
    const name = html("span", "dep", null, row);
    html("b", null, r.candidate, name);
    html("small", "muted", ` ${r.rule}`, name);
    for (const [key, , text, raw] of COLUMNS) {
      const cell = html("span", "num", text(r), row);
      cell.dataset.kpi = key;
      const value = raw(r);
      cell.dataset.value = value === null || value === undefined ? "" : String(value);
    }
  }
}
