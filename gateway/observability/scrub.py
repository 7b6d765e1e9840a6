"""Free text on its way to telemetry: cut short, and rid of personal data and secrets.

An upstream's error message often quotes the request it refused ("Invalid value: 'Contact
jane.doe@example.com ...'"). The client that sent the request may read that (it is its own
text); spans, logs and audit records may not: they get `scrub(text)`, the first `LIMIT`
characters with every finding of the pipeline's PII and secret detectors
(`gateway/pipeline/pii.py`) replaced by its kind, e.g. `[EMAIL]`.
"""

from __future__ import annotations

from gateway.pipeline.pii import detect

LIMIT = 200
# Scanned past the cut, so that a value the cut would split is still found whole and removed.
_LOOKAHEAD = 512


def scrub(text: str, limit: int = LIMIT) -> str:
    window = text[:limit + _LOOKAHEAD]
    pieces, last = [], 0
    for finding in detect(window):
        pieces += [window[last:finding.start], f"[{finding.kind.upper()}]"]
        last = finding.end
    pieces.append(window[last:])
    cleaned = "".join(pieces)
    return cleaned if len(cleaned) <= limit and len(text) <= len(window) \
        else cleaned[:limit] + "…"
