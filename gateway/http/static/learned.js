// The learned router's panel: per learned rule, the strong share it aims at against the share
// it realised (since start, and over its recent window), the threshold in force, and its
// decisions. Kept in its own module so the rest of the dashboard does not need to know it.
import { barChart, html } from "./charts.js";

const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);

export function renderLearned(el, learned) {
  el.replaceChildren();
  const rules = Object.entries(learned || {});
  el.dataset.rules = String(rules.length);
  if (!rules.length) {
    html("p", "empty-note", "No learned rule has routed a request (strategy: learned).", el);
    return;
  }
  for (const [rule, r] of rules) {
    const box = html("div", "learned-rule", null, el);
    box.dataset.rule = rule;
    const head = html("div", null, null, box);
    html("b", null, rule, head);
    const target = r.target_relative_quality !== null && r.target_relative_quality !== undefined
      ? `quality target ${pct(r.target_relative_quality)} → ${pct(r.target_strong_share)} strong`
      : `target ${pct(r.target_strong_share)} strong`;
    html("small", "muted", ` ${target} · threshold ${r.threshold === null ? "–" : r.threshold.toFixed(4)}`, head);
    const off = (v) => (v === null || r.target_strong_share === null || r.target_strong_share === undefined
      ? "" : Math.abs(v - r.target_strong_share) > 0.05 ? "#f5a524" : "#2bc48a");
    barChart(html("div", "bars", null, box), [
      { label: "target", value: r.target_strong_share ?? 0, color: "#8b95a7" },
      { label: "realised, recent", value: r.recent_strong_share ?? 0, color: off(r.recent_strong_share) },
      { label: "realised, since start", value: r.strong_share ?? 0, color: off(r.strong_share),
        note: `(${r.escalate} of ${r.floor + r.escalate}${r.unscored ? `, ${r.unscored} unscored` : ""})` },
    ], { format: pct, scale: 1, keepZero: true });
  }
}
