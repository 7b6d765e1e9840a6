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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from routing.learned.outcomes import PASS_SCORE

if TYPE_CHECKING:
    from routing.learned.evaluate import Evaluation
    from routing.learned.labels import LabelledSet
    from routing.learned.outcomes import LabelReport

_NEEDS_EXTRA = ("podium router {} needs the 'learned' extra (numpy, scikit-learn): "
                "pip install 'podium[learned]'")


# (config path or None, embedder name, since (unix seconds) or None, most records) →
# (request records with a `router` section, newest first; mean feedback score by request id).
AuditReader = Callable[[str | None, str, float | None, int],
                       tuple[list[dict[str, Any]], dict[str, float]]]


def add_router_commands(sub: Any, read_audit: AuditReader | None = None) -> None:
    """Register `router train` and `router eval` on the `podium` sub-parsers; `read_audit`
    reads the gateway's audit trail for `train --from-audit` (the CLI passes it in: the
    storage layer sits above routing)."""
    router = sub.add_parser("router", help="train and evaluate the learned router")
    commands = router.add_subparsers(dest="router_command", required=True)
    train = commands.add_parser("train", help="fit a difficulty head on labelled prompts")
    _data_options(train, required=False)
    train.add_argument("--out", required=True, type=Path, help="where to write the head (JSON)")
    audit = train.add_argument_group("labels from the gateway's own audit trail")
    audit.add_argument("--from-audit", action="store_true",
                       help="also train on cascade outcomes and feedback the gateway recorded")
    audit.add_argument("--config", help="the gateway config naming the audit trail "
                                        "(default: as `podium serve`)")
    audit.add_argument("--since", type=_since, help="only records this recent: 90m, 24h, 7d, "
                                                    "or unix seconds")
    audit.add_argument("--max-records", type=int, default=50_000,
                       help="the newest N records at most (default 50000)")
    audit.add_argument("--pass-score", type=float, default=PASS_SCORE,
                       help="feedback at or above this is a good answer (default 0.5)")
    train.set_defaults(func=cmd_train, read_audit=read_audit)
    ev = commands.add_parser("eval", help="held-out quality-vs-cost curves, with guard rows")
    _data_options(ev)
    ev.add_argument("--folds", type=int, default=5, help="k of the k-fold split (default 5)")
    ev.add_argument("--sample", type=int, help="use a random sample of N rows of each file")
    ev.add_argument("--plot", type=Path, default=Path("router-eval.svg"),
                    help="where to write the curve (SVG; default ./router-eval.svg)")
    ev.add_argument("--no-plot", action="store_true", help="write no plot")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(func=cmd_eval)


def _since(text: str) -> float:
    """A duration back from now (`90m`, `24h`, `7d`) or a unix time, as unix seconds."""
    units = {"m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return time.time() - float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration or a time: {text!r}") from None


def _data_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--data", required=required, action="append", type=Path,
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

    return [load_examples(p, args.weak, args.strong) for p in args.data or ()]


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from routing.learned.embedders import make_embedder
        from routing.learned.labels import LabelError
        from routing.learned.train import train_mixed
    except ImportError:
        print(_NEEDS_EXTRA.format("train"), file=sys.stderr)
        return 2
    if not args.data and not args.from_audit:
        print("error: give --data FILE, --from-audit, or both", file=sys.stderr)
        return 2
    try:
        sets = _load(args)
        examples = [e for s in sets for e in s.examples]
        emb = make_embedder(args.embedder)
        report = _audit_labels(args, emb.name, emb.params) if args.from_audit else None
        kept = [(la.features, la.weak, la.strong) for la in report.labels] if report else []
        head = train_mixed(examples, kept, args.embedder, alphas=(3.0, 10.0, 30.0),
                           length_prior=args.length_prior, seed=args.seed,
                           provenance=_provenance(args, sets, report))
    except (LabelError, ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    head.save(args.out)
    held_out = head.provenance.get("held_out_apgr")
    print(f"{args.out}: head trained on {len(examples) + len(kept)} prompts "
          f"(embedder {head.embedder}, alpha {head.provenance['alpha']}"
          + (f", held-out APGR {held_out}" if held_out is not None else "") + ")")
    return 0


def _audit_labels(args: argparse.Namespace, embedder: str,
                  params: dict[str, Any]) -> LabelReport:
    from routing.learned.outcomes import labels_from_audit

    if args.read_audit is None:
        raise RuntimeError("--from-audit needs the gateway's storage (run it as `podium`)")
    requests, feedback = args.read_audit(args.config, embedder, args.since, args.max_records)
    report = labels_from_audit(requests, feedback, embedder, params, args.pass_score)
    print(report.summary())
    return report


def _provenance(args: argparse.Namespace, sets: Sequence[LabelledSet],
                report: LabelReport | None) -> dict[str, Any]:
    out: dict[str, Any] = {"data": [str(p) for p in args.data or ()]}
    if sets:
        out |= {"weak_model": sets[0].weak_model, "strong_model": sets[0].strong_model}
    if report is not None:
        out["audit"] = {"labels": dict(report.kinds), "skipped": dict(report.skipped),
                        "feedback_used": report.feedback_used, "since": args.since}
    return out


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
