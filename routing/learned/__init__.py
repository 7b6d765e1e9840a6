"""The learned router: a per-request difficulty score that sets the required quality.

Modules (numpy only where marked; the rest is on the request path and stays pure Python):
- `features`: what a score looks at (last user turn, conversation size);
- `embedders` (numpy): text → vector, behind the `Embedder` Protocol;
- `head` (numpy): the linear head and its JSON file;
- `scorer` (numpy): `DifficultyScorer`, cached by prompt digest, with its CPU cost;
- `calibration`: thresholds from a target strong share or from labels;
- `quality`: score → required quality, with the recorded reason;
- `runtime` (numpy): `LearnedRule`, a rule's `learned:` section compiled into scorer + calibration;
- `labels`, `train`, `evaluate`, `metrics`, `plot`, `commands`: `podium router train|eval`
  (training needs the `learned` extra: scikit-learn).

Nothing is imported here, so `import routing.learned.quality` costs no numpy.
"""
