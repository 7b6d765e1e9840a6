"""`podium router train` and `podium router eval` on the shipped RouteLLM labels (a small fixed
sample, so this runs in seconds; the full run is bench/router_eval.py). Skipped, saying why,
where the data is not beside the worktree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routing.learned.features import PromptFeatures
from routing.learned.labels import LabelError, load_examples
from routing.learned.metrics import oracle_scores, report
from routing.learned.scorer import DifficultyScorer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/routellm"
EVALS = DATA / "routellm/evals"
MMLU, GSM8K = EVALS / "mmlu", EVALS / "gsm8k/gsm8k_responses.csv"
needs_data = pytest.mark.skipif(not GSM8K.is_file() or not MMLU.is_dir(),
                                reason=f"RouteLLM labels not found at {DATA}")


def podium(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "router", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


@needs_data
def test_routellm_layouts_load_without_the_contaminated_rows() -> None:
    mmlu, gsm8k = load_examples(MMLU), load_examples(GSM8K)
    assert (len(mmlu), len(gsm8k)) == (14_037, 1_307)   # 14,042 - 5 and 1,319 - 12
    assert len({e.group for e in mmlu.examples}) == 57
    weak = np.array([e.weak for e in gsm8k.examples])
    strong = np.array([e.strong for e in gsm8k.examples])
    assert (round(weak.mean(), 3), round(strong.mean(), 3)) == (0.637, 0.858)


@needs_data
@pytest.mark.parametrize(("path", "apgr", "calls"), [(MMLU, 1.285, 0.085),
                                                     (GSM8K, 1.121, 0.177)])
def test_metrics_reproduce_routellm_oracle_numbers(path: Path, apgr: float,
                                                   calls: float) -> None:
    labelled = load_examples(path)
    weak = np.array([e.weak for e in labelled.examples])
    strong = np.array([e.strong for e in labelled.examples])
    oracle = report("oracle", oracle_scores(weak, strong), weak, strong)
    assert oracle.apgr == pytest.approx(apgr, abs=0.001)
    assert oracle.calls_at_95 == pytest.approx(calls, abs=0.001)
    rng = np.random.default_rng(0)
    assert report("random", rng.random(len(weak)), weak, strong).apgr == pytest.approx(0.5,
                                                                                      abs=0.02)


@needs_data
def test_eval_json_on_a_sample_orders_the_guard_rows(tmp_path: Path) -> None:
    plot = tmp_path / "curve.svg"
    out = podium("eval", "--json", "--data", str(MMLU), "--data", str(GSM8K),
                 "--sample", "800", "--plot", str(plot))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {
        (r["dataset"], r["split"], r["router"]): r for r in result["rows"]}
    for dataset in ("mmlu", "gsm8k", "mmlu+gsm8k"):
        apgr = {name: rows[(dataset, "5-fold", name)]["apgr"]
                for name in ("oracle", "learned", "length", "random")}
        assert apgr["oracle"] > apgr["learned"] > apgr["random"], (dataset, apgr)
        assert 0 < rows[(dataset, "5-fold", "learned")]["calls_at_95"] < 1
    for dataset, trained in (("gsm8k", "mmlu"), ("mmlu", "gsm8k")):
        row = rows[(dataset, "cross", "learned")]
        assert row["train"] == trained and 0.3 < row["apgr"] < 1.0
    assert result["plot"] == str(plot) and plot.read_text().startswith("<svg")
    assert plot.read_text().count("<polyline") == 4 * len(result["evaluations"])


@needs_data
def test_eval_prints_a_table_with_the_plot_beside_it(tmp_path: Path) -> None:
    out = podium("eval", "--data", str(GSM8K), "--sample", "300", "--folds", "3",
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "gsm8k (3-fold, 300 prompts" in out.stdout
    assert [line.split()[0] for line in out.stdout.splitlines()[2:6]] == [
        "learned", "random", "length", "oracle"]
    assert (tmp_path / "router-eval.svg").is_file()


def _jsonl(path: Path, rows: int) -> Path:
    """RouteLLM's GSM8K labels rewritten as JSONL with chat messages: another label source."""
    labelled = load_examples(GSM8K)
    out = path / "labels.jsonl"
    with out.open("w") as handle:
        for e in labelled.examples[:rows]:
            handle.write(json.dumps({"messages": [{"role": "user", "content": e.features.text}],
                                     "cheap-model": e.weak, "dear-model": e.strong}) + "\n")
    return out


@needs_data
def test_train_writes_a_head_that_scores_without_scikit_learn(tmp_path: Path) -> None:
    labels = _jsonl(tmp_path, 400)
    head = tmp_path / "heads/gsm8k.json"
    out = podium("train", "--data", str(labels), "--out", str(head))
    assert out.returncode == 0, out.stderr
    assert "head trained on 400 prompts" in out.stdout
    saved = json.loads(head.read_text())
    assert saved["provenance"]["weak_model"] == "cheap-model"      # the lower-scoring column
    code = ("import sys; from routing.learned.scorer import DifficultyScorer;"
            "from routing.learned.features import PromptFeatures;"
            f"s = DifficultyScorer.from_file({str(head)!r});"
            "print(s.score(PromptFeatures.of_prompt('What is 2 + 2?')));"
            "print('sklearn' in sys.modules, 'scipy' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    score, loaded = run.stdout.splitlines()
    assert loaded == "False False"
    here = DifficultyScorer.from_file(head).score(PromptFeatures.of_prompt("What is 2 + 2?"))
    assert float(score) == pytest.approx(here)


def test_bad_labels_are_an_error_naming_the_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"prompt": "a", "m1": true, "m2": false}\n'
                      '{"prompt": "b", "m1": "maybe", "m2": true}\n')
    with pytest.raises(LabelError, match=r"labels.jsonl:2: 'm\d' must be true/false"):
        load_examples(labels)
    out = podium("train", "--data", str(labels), "--out", str(tmp_path / "h.json"))
    assert out.returncode == 2 and "labels.jsonl:2:" in out.stderr
    out = podium("eval", "--data", str(tmp_path / "missing.jsonl"), "--no-plot")
    assert out.returncode == 2 and "missing.jsonl: no such file" in out.stderr
