"""Labelled prompts: where a learned router's training and evaluation data come from.

Every source is an iterator of `Example` (a prompt, the weak and the strong model's score on it),
so a new source of labels (the gateway's cascade outcomes, feedback, shadow pairs) is one more
function that yields examples; training and evaluation never know where they came from.

File layouts understood by `load_examples`:
- RouteLLM's MMLU folder (`.../mmlu`, or its `responses/` folder): one `mmlu_<subject>.csv` per
  subject, columns `prompt, <weak model>, <strong model>` with True/False;
- RouteLLM's GSM8K CSV (`gsm8k_responses.csv`): the same columns plus the models' answers;
- JSONL: one `{"prompt": str, "<model>": bool | number, ...}` per line (`messages` may stand in
  for `prompt`; the last user turn is then the prompt).
A `contaminated_prompts.jsonl` beside the CSVs (RouteLLM's list of prompts that overlap its own
training data) drops those rows, exactly as RouteLLM's evaluation does.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routing.learned.features import PromptFeatures

# RouteLLM's routed pair: the models whose columns its CSVs carry.
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_STRONG = "gpt-4-1106-preview"


class LabelError(ValueError):
    """A labelled file that cannot be read as one of the layouts above; the message says where."""


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled prompt: scores in [0, 1] (correct = 1.0) for the weak and the strong model."""
    features: PromptFeatures
    weak: float
    strong: float
    group: str = ""                   # e.g. the MMLU subject; lets an evaluation split by group

    @property
    def outcome(self) -> int:
        """0 = only the weak model did better, 1 = a tie, 2 = only the strong model did better."""
        return 1 if self.weak == self.strong else (2 if self.strong > self.weak else 0)


@dataclass(frozen=True, slots=True)
class LabelledSet:
    name: str
    examples: tuple[Example, ...]
    weak_model: str
    strong_model: str

    def __len__(self) -> int:
        return len(self.examples)


def load_examples(path: Path, weak: str | None = None, strong: str | None = None) -> LabelledSet:
    """A labelled file or folder in any layout above; `weak`/`strong` name the model columns."""
    path = Path(path)
    if not path.exists():
        raise LabelError(f"{path}: no such file or folder")
    if path.is_dir():
        folder = path / "responses" if (path / "responses").is_dir() else path
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise LabelError(f"{path}: no CSV files (expected RouteLLM's mmlu_<subject>.csv)")
        drop = _contaminated(folder)
        weak, strong = weak or ROUTELLM_WEAK, strong or ROUTELLM_STRONG
        examples = [e for f in files for e in _csv_examples(f, weak, strong, _subject(f), drop)]
        return LabelledSet(_name(path), tuple(examples), weak, strong)
    if path.suffix == ".csv":
        weak, strong = weak or ROUTELLM_WEAK, strong or ROUTELLM_STRONG
        examples = list(_csv_examples(path, weak, strong, "", _contaminated(path.parent)))
        return LabelledSet(_name(path), tuple(examples), weak, strong)
    return _jsonl_set(path, weak, strong)


def _name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    if stem == "responses":
        stem = path.parent.name
    return stem.removesuffix("_responses")


def _subject(path: Path) -> str:
    return path.stem.removeprefix("mmlu_")


def _contaminated(folder: Path) -> frozenset[str]:
    """RouteLLM's contaminated prompts, from the folder or its parent (the MMLU layout)."""
    for where in (folder, folder.parent):
        listed = where / "contaminated_prompts.jsonl"
        if listed.is_file():
            with listed.open(encoding="utf-8") as lines:
                return frozenset(json.loads(line)["eval_prompt"] for line in lines if line.strip())
    return frozenset()


def _csv_examples(path: Path, weak: str, strong: str, group: str,
                  drop: frozenset[str]) -> Iterator[Example]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("prompt", weak, strong) if c not in (reader.fieldnames or [])]
        if missing:
            raise LabelError(f"{path}: missing column(s) {', '.join(map(repr, missing))}")
        for line, row in enumerate(reader, start=2):
            if row["prompt"] in drop:
                continue
            yield Example(PromptFeatures.of_prompt(row["prompt"]),
                          _score(row[weak], path, line, weak),
                          _score(row[strong], path, line, strong), group)


def _score(raw: Any, path: Path, line: int, column: str) -> float:
    if isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, (int, float)) and 0 <= raw <= 1:
        return float(raw)
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in ("true", "false"):
            return float(text == "true")
        try:
            return _score(float(text), path, line, column)
        except ValueError:
            pass
    raise LabelError(f"{path}:{line}: {column!r} must be true/false or a score in [0, 1], "
                     f"got {raw!r}")


def _jsonl_set(path: Path, weak: str | None, strong: str | None) -> LabelledSet:
    rows = list(_jsonl_rows(path))
    if not rows:
        raise LabelError(f"{path}: no labelled rows")
    models = [k for k in rows[0][1] if k not in ("prompt", "messages", "group")]
    weak, strong = _pick_pair(path, rows, models, weak, strong)
    examples = []
    for line, row in rows:
        for column in (weak, strong):
            if column not in row:
                raise LabelError(f"{path}:{line}: missing {column!r}")
        examples.append(Example(_features(row, path, line), _score(row[weak], path, line, weak),
                                _score(row[strong], path, line, strong),
                                str(row.get("group", ""))))
    return LabelledSet(_name(path), tuple(examples), weak, strong)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LabelError(f"{path}:{number}: not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise LabelError(f"{path}:{number}: each line must be a JSON object")
            yield number, row


def _features(row: dict[str, Any], path: Path, line: int) -> PromptFeatures:
    if isinstance(row.get("prompt"), str):
        return PromptFeatures.of_prompt(row["prompt"])
    if isinstance(row.get("messages"), list):
        return PromptFeatures.of_messages(row["messages"])
    raise LabelError(f"{path}:{line}: needs a string 'prompt' or a 'messages' list")


def _pick_pair(path: Path, rows: Sequence[tuple[int, dict[str, Any]]], models: list[str],
               weak: str | None, strong: str | None) -> tuple[str, str]:
    """The named columns; else, with exactly two models, the one that scores lower is weak."""
    if weak and strong:
        return weak, strong
    others = [m for m in models if m not in (weak, strong)]
    if weak is None and strong is None and len(models) == 2:
        means = {m: sum(_score(r[m], path, n, m) for n, r in rows) / len(rows) for m in models}
        low, high = sorted(models, key=lambda m: means[m])
        return low, high
    if len(others) == 1:
        return (weak, others[0]) if weak else (others[0], strong or "")
    raise LabelError(f"{path}: cannot tell the weak from the strong model among "
                     f"{models}; name them with --weak and --strong")


def scores_of(examples: Iterable[Example]) -> tuple[list[float], list[float]]:
    """The weak and the strong scores, as two parallel lists."""
    weak, strong = [], []
    for e in examples:
        weak.append(e.weak)
        strong.append(e.strong)
    return weak, strong
