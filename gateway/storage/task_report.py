"""Per-workflow KPIs from the ledger's per-task totals (`SpendStore.tasks`): what
`/admin/spend?group_by=workflow` answers.

Over the tasks whose calls started in the window [since, until) (a task that straddles an edge
counts with its calls inside it), per workflow:

    tasks, calls, cost_usd        counted and summed
    tasks_per_hour                tasks / the window's hours (from `since`, else the first task's
                                  start, to `until`, else now; at least one second)
    cost_per_task_usd             mean and p95 (nearest rank) of each task's cost
    failure_rate                  share of tasks whose last call was not answered
    failed_calls                  calls not answered (a call held for approval is not one)
    escalation_rate               share of tasks with at least one escalated call
    approval_rate                 share of tasks with at least one call held for approval
    time_to_resolution_s          mean and p95 of first call's start to last call's end

The same tasks, finished, are the Prometheus series of gateway/observability/task_tally.py:
its `podium_task_cost_usd` mean and `podium_tasks_total{result="error"}` share are this mean
cost per task and this failure rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gateway.storage.records import TaskTotals


def p95(values: Sequence[float]) -> float | None:
    """Nearest-rank 95th percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def workflow_kpis(tasks: Sequence[TaskTotals], since: float | None, until: float | None,
                  now: float) -> list[dict[str, Any]]:
    if not tasks:
        return []
    start = since if since is not None else min(t.first_at for t in tasks)
    hours = max((until if until is not None else now) - start, 1.0) / 3600
    by: dict[str, list[TaskTotals]] = {}
    for task in tasks:
        by.setdefault(task.workflow, []).append(task)
    return [_kpis(name, by[name], hours) for name in sorted(by)]


def _kpis(workflow: str, tasks: list[TaskTotals], hours: float) -> dict[str, Any]:
    n = len(tasks)
    costs = [t.cost_usd for t in tasks]
    times = [max(0.0, t.last_at - t.first_at) for t in tasks]
    return {
        "workflow": workflow, "tasks": n, "calls": sum(t.calls for t in tasks),
        "tasks_per_hour": round(n / hours, 6), "cost_usd": round(sum(costs), 10),
        "cost_per_task_usd": {"mean": round(sum(costs) / n, 10), "p95": p95(costs)},
        "failure_rate": round(sum(t.ended_in_error for t in tasks) / n, 6),
        "failed_calls": sum(t.failures for t in tasks),
        "escalation_rate": round(sum(t.escalations > 0 for t in tasks) / n, 6),
        "approval_rate": round(sum(t.approvals > 0 for t in tasks) / n, 6),
        "time_to_resolution_s": {"mean": round(sum(times) / n, 6), "p95": p95(times)},
        "prompt_tokens": sum(t.prompt_tokens for t in tasks),
        "completion_tokens": sum(t.completion_tokens for t in tasks)}
