"""`podium router train` and `podium router eval`: parser builders and handlers.

gateway/cli.py only calls `add_router_commands`; everything else lives here, so the command
moves with the router, not with the gateway. Handlers import numpy and scikit-learn when they
run, never when `podium` starts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from routing.learned.evaluate import Evaluation
    from routing.learned.labels import LabelledSet

_NEEDS_EXTRA = ("podium router {} needs the 'learned' extra (numpy, scikit-learn): "
                "pip install 'podium[learned]'")


def add_router_commands(sub: Any) -> None:
    """Register `router train` and `router eval` on the `podium` sub-parsers."""
    router = sub.add_parser("router", help="train and evaluate the learned router")
    commands = router.add_subparsers(dest="router_command", required=True)
    train = commands.add_parser("train", help="fit a difficulty head on labelled prompts")
    _data_options(train)
    train.add_argument("--out", required=True, type=Path, help="where to write the head (JSON)")
    train.set_defaults(func=cmd_train)
    ev = commands.add_parser("eval", help="held-out quality-vs-cost curves, with guard rows")
    _data_options(ev)
    ev.add_argument("--folds", type=int, default=5, help="k of the k-fold split (default 5)")
    ev.add_argument("--sample", type=int, help="use a random sample of N rows of each file")
    ev.add_argument("--plot", type=Path, default=Path("router-eval.svg"),
                    help="where to write the curve (SVG; default ./router-eval.svg)")
    ev.add_argument("--no-plot", action="store_true", help="write no plot")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(func=cmd_eval)


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, action="append", type=Path,
                        help="labelled prompts: RouteLLM's MMLU folder, its GSM8K CSV, or "
                             "JSONL {prompt, <model>: correct|score}; repeat for several")
    parser.add_argument("--weak", help="the weak (cheap) model's column (default: RouteLLM's)")
    parser.add_argument("--strong", help="the strong model's column (default: RouteLLM's)")
    parser.add_argument("--embedder", default="hashed",
                        help="hashed (default), wordllama, or hashed+wordllama")
    parser.add_argument("--length-prior", type=float, default=0.0,
                        help="β: lean on prompt length by β score deviations (default 0; ~2 "
                             "for traffic unlike the labels)")
    parser.add_argument("--seed", type=int, default=0)


def _load(args: argparse.Namespace) -> list[LabelledSet]:
    from routing.learned.labels import load_examples

    return [load_examples(p, args.weak, args.strong) for p in args.data]


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from routing.learned.labels import LabelError
        from routing.learned.train import train_head
    except ImportError:
        print(_NEEDS_EXTRA.format("train"), file=sys.stderr)
        return 2
    try:
        sets = _load(args)
        examples = [e for s in sets for e in s.examples]
        head = train_head(examples, args.embedder, alphas=(3.0, 10.0, 30.0),
                          length_prior=args.length_prior, seed=args.seed,
                          provenance={"data": [str(p) for p in args.data],
                                      "weak_model": sets[0].weak_model,
                                      "strong_model": sets[0].strong_model})
    except (LabelError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    head.save(args.out)
    print(f"{args.out}: head trained on {len(examples)} prompts "
          f"(embedder {head.embedder}, alpha {head.provenance['alpha']})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        from routing.learned.evaluate import EvalSettings, evaluate_all
        from routing.learned.labels import LabelError
        from routing.learned.plot import svg
    except ImportError:
        print(_NEEDS_EXTRA.format("eval"), file=sys.stderr)
        return 2
    try:
        sets = [_sample(s, args.sample, args.seed) for s in _load(args)]
        settings = EvalSettings(args.embedder, args.folds, args.seed,
                                length_prior=args.length_prior)
        evaluations = evaluate_all(sets, settings)
    except (LabelError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plot = None if args.no_plot else args.plot
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_text(svg(evaluations))
    if args.json:
        print(json.dumps(_json(evaluations, settings, plot)))
    else:
        print(render(evaluations) + (f"\nplot: {plot}" if plot else ""))
    return 0


def _sample(labelled: LabelledSet, size: int | None, seed: int) -> LabelledSet:
    if size is None or size >= len(labelled):
        return labelled
    from routing.learned.labels import LabelledSet as Set

    picked = random.Random(seed).sample(labelled.examples, size)
    return Set(labelled.name, tuple(picked), labelled.weak_model, labelled.strong_model)


def _json(evaluations: Sequence[Evaluation], settings: Any, plot: Path | None) -> dict[str, Any]:
    return {"rows": [row for ev in evaluations for row in ev.rows()],
            "evaluations": [ev.to_json() for ev in evaluations],
            "settings": {"embedder": settings.embedder, "folds": settings.folds,
                         "seed": settings.seed, "length_prior": settings.length_prior,
                         "bins": settings.bins},
            "plot": str(plot) if plot else None}


def render(evaluations: Sequence[Evaluation]) -> str:
    lines = []
    for ev in evaluations:
        where = ev.dataset if ev.split != "cross" else f"train {ev.train} -> test {ev.dataset}"
        lines += [f"{where} ({ev.split}, {ev.examples} prompts; weak {ev.weak_quality:.3f}, "
                  f"strong {ev.strong_quality:.3f})",
                  f"  {'router':<8} {'APGR':>6} {'calls@95':>9} {'50% gap':>8} {'80% gap':>8}"]
        for r in ev.reports:
            lines.append(f"  {r.router:<8} {r.apgr:>6.3f} {_pct(r.calls_at_95):>9} "
                         f"{_pct(r.share_for_50):>8} {_pct(r.share_for_80):>8}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
