"""The tasks in progress in this process, and the per-task metrics they become when finished.

A task's calls are summed here as they end (`OpenTasks.end`); a task with no call in flight and
none for `tasks.idle_s` is finished (`expire`, once a second) and observed once into the
Prometheus series below, labelled by workflow only (a declared name, `other` or `none`: never a
task id, so the series stay bounded whatever callers send).

    podium_tasks_total{workflow, result}         finished tasks; result ok | error (its last
                                                 call was not answered)
    podium_task_cost_usd{workflow}               histogram: a task's cost (all its calls)
    podium_task_duration_seconds{workflow}       histogram: first call's start to last's end
    podium_task_escalated_total{workflow}        finished tasks with an escalated call
    podium_task_approval_total{workflow}         finished tasks with a call held for approval
    podium_workflow_calls_total{workflow, result}  calls, as they end: ok | failed | held
    podium_workflow_cost_usd_total{workflow}     spend, as calls end
    podium_tasks_open                            tasks in progress (summed over workers)
    podium_tasks_evicted_total                   tasks finished early: `tasks.max_open` reached

Memory is bounded: at most `tasks.max_open` tasks (default 10,000, about 0.5 KB each) per
process; past that the one idle longest is finished early (and counted as evicted). Each
process keeps its own: with `--workers N` a task whose calls land on two workers is counted by
each as a task of its own in these series (the ledger, `/admin/spend?group_by=task`, always
sums it whole).

The first call of a task also lends its span to the rest: a later call whose trace is another
links its SERVER span to the first call's, so a task is one trace (when the client propagates
`traceparent`) or one linked set of traces.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from opentelemetry.trace import SpanContext

from gateway.observability.samples import Samples
from gateway.pipeline.tasks import TaskTag

# Log-spaced: a task of one cheap call costs micro-dollars, an agent run on a large model dollars.
COST_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass
class OpenTask:
    workflow: str
    first_span: SpanContext | None
    first_at: float = 0.0              # wall clock: the first call's start
    last_at: float = 0.0               # wall clock: the latest call's end
    seen_mono: float = 0.0             # monotonic: the last activity (idle expiry)
    in_flight: int = 0
    calls: int = 0
    failures: int = 0
    escalations: int = 0
    approvals: int = 0
    cost_usd: float = 0.0
    failed_last: bool = False          # the call that ended last was not answered


@dataclass(frozen=True)
class CallFacts:
    """What one finished call adds to its task."""
    started_at: float
    ended_at: float
    status: int
    held: bool
    escalations: int
    cost_usd: float

    @property
    def failed(self) -> bool:
        return self.status != 200 and not self.held


@dataclass
class OpenTasks:
    tasks: OrderedDict[tuple[str, str], OpenTask] = field(default_factory=OrderedDict)
    evicted: int = 0

    def begin(self, tag: TaskTag, span: SpanContext | None, now_mono: float,
              max_open: int) -> tuple[SpanContext | None, list[OpenTask]]:
        """A call of `tag`'s task starts: the span of its first call (to link to, None for
        the first), and the tasks finished early to stay within `max_open`."""
        task = self.tasks.get(tag.key)
        evicted: list[OpenTask] = []
        if task is None:
            while len(self.tasks) >= max_open:
                evicted.append(self.tasks.popitem(last=False)[1])
            self.evicted += len(evicted)
            task = self.tasks[tag.key] = OpenTask(tag.workflow, span)
            first = None
        else:
            self.tasks.move_to_end(tag.key)
            first = task.first_span
        task.in_flight += 1
        task.seen_mono = now_mono
        return first, evicted

    def end(self, tag: TaskTag, call: CallFacts, now_mono: float) -> None:
        task = self.tasks.get(tag.key)
        if task is None:  # evicted while this call was in flight: counted no further
            return
        self.tasks.move_to_end(tag.key)   # the order is by last activity
        task.in_flight = max(0, task.in_flight - 1)
        task.seen_mono = now_mono
        task.first_at = call.started_at if task.calls == 0 else min(task.first_at,
                                                                     call.started_at)
        task.last_at = max(task.last_at, call.ended_at)
        task.calls += 1
        task.failures += call.failed
        task.escalations += call.escalations
        task.approvals += call.held
        task.cost_usd += call.cost_usd
        task.failed_last = call.failed

    def expire(self, now_mono: float, idle_s: float) -> list[OpenTask]:
        """The tasks idle for `idle_s` with nothing in flight, removed (oldest activity
        first: the order is by last activity, so the scan stops at the first live one)."""
        done = []
        for key, task in list(self.tasks.items()):
            if now_mono - task.seen_mono < idle_s:
                break
            if task.in_flight == 0:
                done.append(task)
                del self.tasks[key]
        return done


class TaskMetrics:
    def __init__(self, samples: Samples) -> None:
        self.tasks = samples.counter(
            "podium_tasks_total", "Finished tasks by workflow; result: ok, or error when the "
            "last call was not answered", ["workflow", "result"])
        self.cost = samples.histogram(
            "podium_task_cost_usd", "A finished task's cost in USD, all its calls", ["workflow"],
            buckets=COST_BUCKETS)
        self.duration = samples.histogram(
            "podium_task_duration_seconds", "A finished task's time from its first call's start "
            "to its last call's end", ["workflow"], buckets=DURATION_BUCKETS)
        self.escalated = samples.counter(
            "podium_task_escalated_total", "Finished tasks with at least one escalated call",
            ["workflow"])
        self.approved = samples.counter(
            "podium_task_approval_total", "Finished tasks with at least one call held for "
            "human approval", ["workflow"])
        self.calls = samples.counter(
            "podium_workflow_calls_total", "Calls of tasks by workflow, as they end: ok, "
            "failed or held", ["workflow", "result"])
        self.spend = samples.counter(
            "podium_workflow_cost_usd_total", "Spend of tasks' calls by workflow, as they end",
            ["workflow"])
        self.open = samples.gauge("podium_tasks_open", "Tasks in progress", mode="livesum")
        self.evicted = samples.counter(
            "podium_tasks_evicted_total", "Tasks finished early because tasks.max_open were in "
            "progress")

    def call(self, workflow: str, call: CallFacts) -> None:
        result = "held" if call.held else "failed" if call.failed else "ok"
        self.calls.labels(workflow, result).inc()
        self.spend.labels(workflow).inc(call.cost_usd)

    def finished(self, tasks: Iterable[OpenTask]) -> None:
        for task in tasks:
            if task.calls == 0:  # evicted before any of its calls ended: nothing to count
                continue
            self.tasks.labels(task.workflow, "error" if task.failed_last else "ok").inc()
            self.cost.labels(task.workflow).observe(task.cost_usd)
            self.duration.labels(task.workflow).observe(max(0.0, task.last_at - task.first_at))
            if task.escalations:
                self.escalated.labels(task.workflow).inc()
            if task.approvals:
                self.approved.labels(task.workflow).inc()
