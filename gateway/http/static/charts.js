// Small SVG/HTML charts for the dashboard: no libraries, nothing fetched from anywhere.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#4e9af1", "#f5a524", "#2bc48a", "#a77bf3", "#2fc1d6", "#f17eb8",
  "#c7d44b", "#ff7a45", "#7fd3ff", "#d9a6ff"];

const colorByName = new Map();
export function colorFor(name) {
  if (!colorByName.has(name)) colorByName.set(name, PALETTE[colorByName.size % PALETTE.length]);
  return colorByName.get(name);
}

function svg(tag, attrs, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function html(tag, className, text, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

// A "nice" upper bound and tick step for an axis from 0 to max.
function niceScale(max, ticks) {
  if (!(max > 0)) return { top: 1, step: 1 / ticks };
  const raw = max / ticks;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  return { top: step * ticks, step };
}

function clock(t) {
  const d = new Date(t * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit",
    hour12: false });
}

// Line chart. opts: {series: [{name, color?, points: [[t, v|null], ...]}], t0, t1,
// format(v) for values, tick(v) for the axis (default: format), height, yMax (fixed top,
// e.g. 1 for ratios), area (fill under the first series), empty (message)}.
export function lineChart(el, opts) {
  const width = Math.max(280, el.clientWidth || 480);
  const height = opts.height || 190;
  const series = opts.series.filter((s) => s.points.length);
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v !== null));
  const points = Math.max(0, ...series.map((s) => s.points.filter((p) => p[1] !== null).length));
  const { top, step } = opts.yMax ? { top: opts.yMax, step: opts.yMax / 4 }
    : niceScale(Math.max(...values, 0) * 1.08, 4);
  const labels = [0, 1, 2, 3, 4].map((i) => (opts.tick || opts.format)(step * i));
  const pad = { l: 14 + 6.6 * Math.max(...labels.map((l) => l.length)), r: 12, t: 10, b: 24 };
  const plotW = width - pad.l - pad.r, plotH = height - pad.t - pad.b;
  const t0 = opts.t0, t1 = Math.max(opts.t1, opts.t0 + 1);
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v) => pad.t + plotH - (Math.min(v, top) / top) * plotH;

  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height,
    role: "img", "aria-label": el.dataset.title || el.id });
  for (let i = 0; i <= 4; i++) {
    const v = step * i, yy = y(v);
    svg("line", { x1: pad.l, x2: width - pad.r, y1: yy, y2: yy, class: "grid" }, root);
    svg("text", { x: pad.l - 8, y: yy + 4, class: "tick", "text-anchor": "end" }, root)
      .textContent = labels[i];
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    svg("text", { x: x(t), y: height - 6, class: "tick", "text-anchor": anchor }, root)
      .textContent = clock(t);
  }
  series.forEach((s, index) => {
    const color = s.color || colorFor(s.name);
    // Split into runs of known values; a lone point is drawn as a dot.
    const runs = [];
    let run = [];
    for (const [t, v] of s.points) {
      if (v === null || t < t0) { if (run.length) runs.push(run); run = []; continue; }
      run.push([x(t), y(v)]);
    }
    if (run.length) runs.push(run);
    for (const r of runs) {
      if (r.length === 1) {
        svg("circle", { cx: r[0][0], cy: r[0][1], r: 2.6, fill: color }, root);
        continue;
      }
      const d = r.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
      if (opts.area && index === 0) {
        const base = y(0).toFixed(1);
        svg("path", { d: `${d}L${r[r.length - 1][0].toFixed(1)},${base}L${r[0][0].toFixed(1)},${base}Z`,
          fill: color, "fill-opacity": 0.14, stroke: "none" }, root);
      }
      const line = svg("path", { d, fill: "none", stroke: color, "stroke-width": 2,
        "stroke-linejoin": "round", "stroke-linecap": "round" }, root);
      if (s.dashed) line.setAttribute("stroke-dasharray", "5 4");
    }
    const last = [...s.points].reverse().find((p) => p[1] !== null);
    if (last) svg("circle", { cx: x(last[0]), cy: y(last[1]), r: 3.5, fill: color,
      class: "last" }, root);
  });
  if (!points) {
    svg("text", { x: pad.l + plotW / 2, y: pad.t + plotH / 2, class: "empty",
      "text-anchor": "middle" }, root).textContent = opts.empty || "Waiting for traffic…";
  }
  const cursor = svg("line", { y1: pad.t, y2: pad.t + plotH, class: "cursor",
    visibility: "hidden" }, root);
  el.replaceChildren(root);
  const tip = html("div", "tip", null, el);
  // Hover: a cursor and every series' value at the nearest sample; kept across re-renders.
  const show = (clientX) => {
    const box = root.getBoundingClientRect();
    const t = t0 + (((clientX - box.left) * (width / box.width) - pad.l) / plotW) * (t1 - t0);
    const near = series.map((s) => [s, s.points.reduce(
      (a, b) => (Math.abs(b[0] - t) < Math.abs(a[0] - t) ? b : a))]);
    if (!near.length || t < t0 || t > t1) return;
    const at = near[0][1][0];
    cursor.setAttribute("x1", x(at)); cursor.setAttribute("x2", x(at));
    cursor.setAttribute("visibility", "visible");
    tip.replaceChildren();
    html("div", "tip-time", clock(at), tip);
    for (const [s, p] of near) {
      const line = html("div", null, null, tip);
      html("i", "swatch", null, line).style.background = s.color || colorFor(s.name);
      html("span", null, ` ${s.name} `, line);
      html("b", null, p[1] === null ? "–" : opts.format(p[1]), line);
    }
    tip.hidden = false;
    const left = (x(at) / width) * box.width;
    tip.style.left = `${Math.max(0, Math.min(left + 12, box.width - tip.offsetWidth - 4))}px`;
  };
  root.addEventListener("mousemove", (event) => { el.dataset.hover = event.clientX; show(event.clientX); });
  root.addEventListener("mouseleave", () => {
    delete el.dataset.hover;
    tip.hidden = true;
    cursor.setAttribute("visibility", "hidden");
  });
  tip.hidden = true;
  const legend = html("div", "legend", null, el);
  for (const s of opts.series) {
    const last = [...s.points].reverse().find((p) => p[1] !== null);
    const item = html("span", "legend-item", null, legend);
    html("i", "swatch", null, item).style.background = s.color || colorFor(s.name);
    html("span", "legend-name", s.name, item);
    html("b", null, last ? opts.format(last[1]) : "–", item);
  }
  if (el.dataset.hover) show(Number(el.dataset.hover));
  el.dataset.points = String(points);
  el.dataset.max = String(values.length ? Math.max(...values) : 0);
  el.dataset.series = String(series.length);
}

// Horizontal bars. rows: [{label, value, note?, color?}]; opts: format(v) for the value text,
// scale (the value of a full bar; default the largest), max rows, empty (message).
export function barChart(el, rows, opts = {}) {
  const shown = rows.filter((r) => r.value !== 0 || opts.keepZero).slice(0, opts.max || 8);
  el.replaceChildren();
  el.dataset.rows = String(shown.length);
  if (!shown.length) {
    html("p", "empty-note", opts.empty || "Nothing yet.", el);
    return;
  }
  const top = opts.scale || Math.max(...shown.map((r) => Math.abs(r.value)), 1e-12);
  for (const r of shown) {
    const row = html("div", "bar-row", null, el);
    row.title = `${r.label}: ${(opts.format || String)(r.value)}${r.note ? " " + r.note : ""}`;
    html("span", "bar-label", r.label, row);
    const track = html("span", "bar-track", null, row);
    const fill = html("span", "bar-fill", null, track);
    fill.style.width = `${Math.max(1.5, (Math.abs(r.value) / top) * 100).toFixed(1)}%`;
    fill.style.background = r.color || colorFor(r.label);
    const value = html("span", "bar-value", (opts.format || String)(r.value), row);
    if (r.note) html("small", null, ` ${r.note}`, value);
  }
}

export { html };
