"""Shadow trials' comparisons, in SQLite (PostgreSQL in postgres_shadow.py), and the report
both backends give from them. Both pass `tests/test_store_contract.py`.

The report is one aggregate query, the same SQL in both dialects (`REPORT_SQL`), turned into
rates here (`report_rows`), so `podium shadow report`, the dashboard and a test that counts the
stored pairs by hand all get the same numbers:

    trials            comparisons stored (the candidate was called)
    error_rate        share of trials whose candidate call failed
    agreement_rate    of the trials the candidate answered: share that agreed (the judge's
                      verdict where a judge ran, else similarity >= the rule's agree_at)
    primary_pass_rate, candidate_pass_rate
                      of those trials: share whose answer passed the cascade's checks
    primary_cost_usd, candidate_cost_usd, cost_ratio
                      mean cost per answered trial, and candidate / primary
    primary_latency_s, candidate_latency_s, latency_ratio
                      mean time waiting on the upstream per answered trial, and the ratio
    judge_cost_usd    what the judge's calls cost in all
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.storage.records import ShadowPair
from gateway.storage.sqlite import BatchedSQLiteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS {t}shadow_pairs (
    ts {real} NOT NULL, request_id TEXT NOT NULL, rule TEXT NOT NULL, primary_dep TEXT NOT NULL,
    candidate TEXT NOT NULL, status TEXT NOT NULL, error TEXT, primary_cost {real},
    candidate_cost {real}, judge_cost {real}, primary_latency_s {real},
    candidate_latency_s {real}, primary_passed INTEGER, candidate_passed INTEGER,
    primary_check TEXT, candidate_check TEXT, similarity {real}, judge_score {real},
    agreed INTEGER, candidate_cheaper INTEGER, features TEXT, embedder TEXT);
CREATE INDEX IF NOT EXISTS {t}shadow_pairs_ts ON {t}shadow_pairs (ts);
"""
_OK = "CASE WHEN status = 'ok' THEN {} ELSE 0 END"
REPORT_SQL = (
    "SELECT rule, candidate, COUNT(*), "
    "SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END), "
    "SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), "
    "SUM(COALESCE(agreed, 0)), "
    f"SUM({_OK.format('COALESCE(primary_passed, 0)')}), "
    f"SUM({_OK.format('COALESCE(candidate_passed, 0)')}), "
    f"SUM({_OK.format('primary_cost')}), SUM({_OK.format('candidate_cost')}), "
    f"SUM({_OK.format('primary_latency_s')}), SUM({_OK.format('candidate_latency_s')}), "
    "SUM(judge_cost), SUM(similarity), COUNT(similarity), SUM(judge_score), COUNT(judge_score) "
    "FROM {t}shadow_pairs WHERE ts >= {since} AND ({rule} IS NULL OR rule = {rule}) "
    "GROUP BY rule, candidate ORDER BY rule, candidate")
_SELECT = "SELECT " + ", ".join(ShadowPair.COLUMNS) + " FROM shadow_pairs"


def _rate(part: float, whole: float, digits: int = 6) -> float | None:
    return round(part / whole, digits) if whole else None


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def report_rows(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """The report's numbers from `REPORT_SQL`'s rows (see the module docstring)."""
    out = []
    for (rule, candidate, trials, errors, ok, agreed, p_pass, c_pass, p_cost, c_cost, p_lat,
         c_lat, judge_cost, sim_sum, sim_n, judge_sum, judge_n) in rows:
        p_mean, c_mean = _rate(p_cost or 0.0, ok, 12), _rate(c_cost or 0.0, ok, 12)
        p_ms, c_ms = _rate(p_lat or 0.0, ok, 9), _rate(c_lat or 0.0, ok, 9)
        out.append({
            "rule": rule, "candidate": candidate, "trials": trials, "answered": ok,
            "errors": errors, "error_rate": _rate(errors, trials),
            "agreed": agreed, "agreement_rate": _rate(agreed, ok),
            "primary_pass_rate": _rate(p_pass, ok), "candidate_pass_rate": _rate(c_pass, ok),
            "primary_cost_usd": p_mean, "candidate_cost_usd": c_mean,
            "cost_ratio": _ratio(c_mean or 0.0, p_mean or 0.0),
            "primary_latency_s": p_ms, "candidate_latency_s": c_ms,
            "latency_ratio": _ratio(c_ms or 0.0, p_ms or 0.0),
            "mean_similarity": _rate(sim_sum or 0.0, sim_n),
            "judged": judge_n, "mean_judge_score": _rate(judge_sum or 0.0, judge_n),
            "judge_cost_usd": round(judge_cost or 0.0, 10)})
    return out


class ShadowPairs(BatchedSQLiteStore[ShadowPair]):
    _schema, _what = SCHEMA.format(t="", real="REAL"), "shadow comparisons"

    def _write_batch(self, pairs: list[ShadowPair]) -> None:
        db = self._conn()
        marks = ",".join("?" * len(ShadowPair.COLUMNS))
        with db:
            db.execute("BEGIN")
            db.executemany(f"INSERT INTO shadow_pairs VALUES ({marks})", [p.row() for p in pairs])

    async def pairs(self, rule: str | None, since: float | None,
                    limit: int = 10_000) -> list[ShadowPair]:
        await self.flush()
        rows = self._read().execute(
            _SELECT + " WHERE ts >= ? AND (? IS NULL OR rule = ?) ORDER BY ts DESC LIMIT ?",
            (since or 0.0, rule, rule, limit))
        return [ShadowPair.from_row(r) for r in rows]

    async def report(self, rule: str | None, since: float | None) -> list[dict[str, Any]]:
        await self.flush()
        sql = REPORT_SQL.format(t="", since="?", rule="?")
        return report_rows(self._read().execute(sql, (since or 0.0, rule, rule)).fetchall())
