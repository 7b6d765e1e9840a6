"""The learned router's full benchmark: quality, calibration and cost on RouteLLM's labels.

    .venv/bin/python -m bench.router_eval [--data ../shared/data/routellm] [--no-write]

Measures, and writes between the `router:generated` markers of bench/RESULTS.md:
- 5-fold held-out APGR / calls@95 / shares for 50 and 80 % of the gap on MMLU, GSM8K and both
  pooled, with the guard rows, and the cross-dataset rows (with and without a length prior);
- strong-share calibration error with thresholds from 3k unlabelled prompts (20 draws);
- a quality target from n labels (with the margin) checked on the prompts not used;
- CPU per uncached score (p50/p95, default embedder and WordLlama), cold start and RSS added.
The plot goes to bench/router-eval.svg; everything to bench/out/router-eval.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from routing.learned.calibration import for_quality, for_share, knots_of, quality_curve
from routing.learned.commands import render
from routing.learned.embedders import make_embedder
from routing.learned.evaluate import (
    Design,
    EvalSettings,
    Evaluation,
    evaluate_all,
    held_out_scores,
)
from routing.learned.labels import LabelledSet, load_examples
from routing.learned.plot import svg
from routing.learned.train import train_head

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "<!-- router:generated:begin -->", "<!-- router:generated:end -->"


def load(data: Path) -> list[LabelledSet]:
    evals = data / "routellm/evals"
    return [load_examples(evals / "mmlu"), load_examples(evals / "gsm8k/gsm8k_responses.csv")]


def calibration_error(scores: np.ndarray, share: float = 0.4, recent: int = 3000,
                      draws: int = 20) -> dict[str, float]:
    """Threshold from `recent` unlabelled scores; realised share on the prompts not drawn."""
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(draws):
        order = rng.permutation(len(scores))
        cal = for_share(scores[order[:recent]].tolist(), share, "bench")
        realised = float((scores[order[recent:]] >= cal.threshold).mean())
        errors.append(abs(realised - share) * 100)
    return {"target": share, "recent": recent, "draws": draws,
            "mean_points": round(statistics.mean(errors), 2), "max_points": round(max(errors), 2)}


def quality_target(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray,
                   target: float = 0.95, draws: int = 20) -> list[dict[str, Any]]:
    """Pick the share from n labels (with the margin); realised quality on the other prompts."""
    rng = np.random.default_rng(1)
    out = []
    for n in (260, 1000, 3000):
        realised, shares = [], []
        for _ in range(draws):
            order = rng.permutation(len(scores))
            lab, rest = order[:n], order[n:]
            curve = quality_curve(scores[lab].tolist(), weak[lab].tolist(), strong[lab].tolist())
            cal = for_quality(curve, knots_of(scores[lab].tolist()), target)
            to_strong = scores[rest] >= cal.threshold
            routed = np.where(to_strong, strong[rest], weak[rest]).mean()
            realised.append(float(routed / strong[rest].mean()))
            shares.append(float(to_strong.mean()))
        out.append({"labels": n, "target": target, "worst": round(min(realised), 4),
                    "mean": round(statistics.mean(realised), 4),
                    "strong_share": round(statistics.mean(shares), 3)})
    return out


def cpu_per_score(sets: list[LabelledSet], embedder: str, prompts: int = 2000
                  ) -> dict[str, float]:
    """CPU of uncached scores on real prompts (thread time: what the event loop would pay)."""
    examples = [e for s in sets for e in s.examples]
    head = train_head(examples[::4], embedder, alphas=(10.0,))
    emb = head.make_embedder()
    rng = np.random.default_rng(2)
    picked = [examples[i].features for i in rng.choice(len(examples), prompts, replace=False)]
    head.score(picked[0], emb)                    # loads lazy weights; not a request's cost
    samples = []
    for f in picked:
        started = time.thread_time_ns()
        head.score(f, emb)
        samples.append((time.thread_time_ns() - started) / 1e6)
    q = np.percentile(samples, [50, 95, 99])
    return {"embedder": embedder, "prompts": prompts, "p50_ms": round(float(q[0]), 3),
            "p95_ms": round(float(q[1]), 3), "p99_ms": round(float(q[2]), 3)}


_COLD = """
import json, resource, sys, time
def rss():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024
import gateway.app  # the gateway as it starts anyway
before, t0 = rss(), time.perf_counter()
from routing.learned.scorer import DifficultyScorer
scorer = DifficultyScorer.from_file(sys.argv[1])
scorer.warm()
print(json.dumps({"cold_start_s": round(time.perf_counter() - t0, 3),
                  "rss_added_mb": round(rss() - before, 1)}))
"""


def cold_start(head: Path) -> dict[str, float]:
    runs = [json.loads(subprocess.run([sys.executable, "-c", _COLD, str(head)], cwd=ROOT,
                                      capture_output=True, text=True, check=True).stdout)
            for _ in range(3)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def markdown(evaluations: list[Evaluation], prior: list[Evaluation], extra: dict[str, Any]
             ) -> str:
    lines = [BEGIN, "## Learned router (generated by `python -m bench.router_eval`)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"embedder `hashed` (word 1-2-grams, 2^18 buckets); ridge head; 5-fold, seed 0",
             "- plot: [router-eval.svg](router-eval.svg)", "",
             "| evaluated on | split | trained on | router | APGR | calls@95 | 50 % gap | "
             "80 % gap |", "|---|---|---|---|---|---|---|---|"]
    for ev in evaluations + [e for e in prior if e.split == "cross"]:
        tag = " (length prior 2)" if ev in prior else ""
        for r in ev.reports:
            if tag and r.router != "learned":
                continue
            lines.append(f"| {ev.dataset} | {ev.split} | {ev.train} | {r.router}{tag} | "
                         f"{r.apgr:.3f} | {_pct(r.calls_at_95)} | {_pct(r.share_for_50)} | "
                         f"{_pct(r.share_for_80)} |")
    cal, cost = extra["calibration"], extra["cpu"]
    lines += ["", f"- strong-share calibration, target {cal['target']:.0%}, threshold from "
              f"{cal['recent']} unlabelled prompts, {cal['draws']} draws: mean error "
              f"{cal['mean_points']} points, worst {cal['max_points']}",
              "- quality target 95 % of strong, share chosen on n labels with the margin, "
              "realised on the other prompts (20 draws): " + "; ".join(
                  f"n={q['labels']}: worst {q['worst']:.1%}, mean {q['mean']:.1%} at "
                  f"{q['strong_share']:.0%} strong" for q in extra["quality_target"])]
    lines += [f"- CPU per uncached score, `{c['embedder']}`: p50 {c['p50_ms']} ms, p95 "
              f"{c['p95_ms']} ms, p99 {c['p99_ms']} ms ({c['prompts']} prompts)" for c in cost]
    cold = extra["cold_start"]
    lines += [f"- cold start added (import, load head, first score): {cold['cold_start_s']} s; "
              f"RSS added: {cold['rss_added_mb']} MB (on top of the imported gateway)", END]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def write_results(block: str) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/routellm")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args(argv)
    sets = load(args.data)
    evaluations = evaluate_all(sets, EvalSettings())
    prior = evaluate_all(sets, EvalSettings(length_prior=2.0))
    print(render(evaluations))
    pooled = Design(LabelledSet("pooled", tuple(e for s in sets for e in s.examples),
                                sets[0].weak_model, sets[0].strong_model), make_embedder("hashed"))
    scores = held_out_scores(pooled, EvalSettings())
    head_path = HERE / "out/router-head.json"
    train_head([e for s in sets for e in s.examples]).save(head_path)
    extra = {"calibration": calibration_error(scores),
             "quality_target": quality_target(scores, pooled.weak, pooled.strong),
             "cpu": [cpu_per_score(sets, "hashed"), cpu_per_score(sets, "wordllama")],
             "cold_start": cold_start(head_path)}
    print(json.dumps(extra, indent=2))
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out/router-eval.json").write_text(json.dumps(
        {"rows": [r for ev in evaluations + prior for r in ev.rows()], **extra}, indent=1))
    if not args.no_write:
        (HERE / "router-eval.svg").write_text(svg(evaluations))
        write_results(markdown(evaluations, prior, extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
