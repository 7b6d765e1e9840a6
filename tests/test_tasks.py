"""Tasks and workflows: an agent-like client makes 5-call tasks in two workflows, some failing,
escalating or held for approval; `/admin/spend?group_by=workflow`, the Prometheus series and
the dashboard (in Chromium) agree on cost per task and failure rate; a task's calls form one
trace (with `traceparent`) or link to its first call (without)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import build_app
from gateway.config import parse_config
from gateway.http import dashboard
from gateway.http.dashboard_window import History
from gateway.observability import telemetry
from tests.conftest import ADMIN, APP_KEY, Upstream, base_config, deployment
from tests.support.cdp import Page, browser, open_page
from tests.support.metrics import scrape, total
from tests.support.waiting import until

TRIAGE, DRAFTING = 6, 4          # tasks per workflow


def task_config(url: str, tmp: Path) -> dict[str, Any]:
    cfg = base_config(url)
    cfg["model_list"] += [
        deployment("flaky", "sim-error500", url),
        deployment("careful", "sim-refuse", url, quality=40, input_cost_per_token=1e-7,
                   output_cost_per_token=1e-7),
        deployment("careful", "sim-strong", url, quality=90, input_cost_per_token=1e-6,
                   output_cost_per_token=2e-6)]
    cfg["routing"] = {"retries": {"attempts": 0}, "breaker": {"failures": 1000},
                      "rules": [{"name": "careful-cascade", "match": {"model": "careful"},
                                 "strategy": "cascade"}]}
    cfg["approvals"] = [{"name": "legal", "match": {"last_user_message": "contract"}}]
    cfg["workflows"] = [{"name": "triage"}, {"name": "drafting"}]
    # Long enough that no gap between two calls of a task (the client's own time, on a busy
    # machine) finishes it early; short enough to wait for.
    cfg["tasks"] = {"idle_s": 3.0}
    cfg["teams"] = [{"name": "support"}]
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    cfg["cache"] = {"enabled": False}
    cfg["key_store"] = {"path": ":memory:"}
    cfg["storage"] = {"path": str(tmp / "podium.sqlite3")}
    return cfg


@dataclass
class Served:
    base: str
    spans: InMemorySpanExporter

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base + "/v1", api_key=APP_KEY, max_retries=0)


@pytest.fixture
async def served(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Served]:
    spans = InMemorySpanExporter()
    app = build_app(parse_config(task_config(upstream.url, tmp_path), env={}),
                    telemetry.with_exporter(spans))
    app[dashboard.HISTORY] = History(os.getpid(), every_s=0.25)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Served(f"http://127.0.0.1:{server.port}", spans)
    await server.close()


def triage_plan(k: int) -> list[tuple[str, str]]:
    """(model, prompt) of each call: the third escalates; every third task ends failing."""
    return [("chat", f"read ticket {k}"), ("chat", f"classify {k}"), ("careful", f"check {k}"),
            ("chat", f"reply {k}"), ("flaky" if k % 3 == 0 else "chat", f"close {k}")]


def drafting_plan(k: int) -> list[tuple[str, str]]:
    """A failure mid-task for even k (the task goes on), a held answer in task 1, and task 3
    ends with a failure."""
    return [("chat", f"outline {k}"), ("flaky" if k % 2 == 0 else "chat", f"draft {k}"),
            ("chat", f"the contract {k}" if k == 1 else f"edit {k}"), ("chat", f"polish {k}"),
            ("flaky" if k == 3 else "chat", f"send {k}")]


async def run_task(client: openai.AsyncOpenAI, workflow: str, k: int,
                   plan: list[tuple[str, str]], via_metadata: bool) -> None:
    task = f"{workflow}-{k}"
    for model, prompt in plan:
        tag = ({"metadata": {"podium_task": task, "podium_workflow": workflow}}
               if via_metadata else
               {"extra_headers": {"x-podium-task": task, "x-podium-workflow": workflow}})
        try:
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], **tag)
        except openai.APIStatusError as err:      # an agent notes the failure and goes on
            assert err.status_code in (403, 502, 503)


async def agent_traffic(served: Served) -> None:
    client = served.client()
    await asyncio.gather(
        *(run_task(client, "triage", k, triage_plan(k), False) for k in range(TRIAGE)),
        *(run_task(client, "drafting", k, drafting_plan(k), True) for k in range(DRAFTING)))
    await client.chat.completions.create(model="chat", messages=[  # in no task
        {"role": "user", "content": "untagged"}])


async def admin_json(base: str, path: str) -> Any:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s, \
            s.get(base + path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def finished_tasks(base: str) -> float:
    return total(await scrape(base + "/v1"), "podium_tasks_total")


def from_prometheus(metrics: Any, workflow: str) -> tuple[float, float]:
    """(mean cost per task, failure rate) as Prometheus has them."""
    tasks = total(metrics, "podium_tasks_total", workflow=workflow)
    cost = total(metrics, "podium_task_cost_usd_sum", workflow=workflow)
    errors = total(metrics, "podium_tasks_total", workflow=workflow, result="error")
    assert total(metrics, "podium_task_cost_usd_count", workflow=workflow) == tasks
    return cost / tasks, errors / tasks


async def test_workflow_kpis_agree_in_the_ledger_and_prometheus(served: Served) -> None:
    await agent_traffic(served)
    await until(lambda: _at_least(served.base, TRIAGE + DRAFTING), "every task to finish")
    listed = await admin_json(served.base, "/admin/spend?group_by=workflow")
    kpis = {row["workflow"]: row for row in listed["data"]}
    assert set(kpis) == {"triage", "drafting"}
    triage, drafting = kpis["triage"], kpis["drafting"]
    assert (triage["tasks"], triage["calls"], drafting["tasks"]) == (TRIAGE, 5 * TRIAGE, DRAFTING)
    assert triage["failure_rate"] == pytest.approx(2 / 6)       # tasks 0 and 3 end failing
    assert triage["escalation_rate"] == 1.0 and triage["approval_rate"] == 0.0
    assert drafting["failure_rate"] == pytest.approx(1 / 4)     # task 3 only
    assert drafting["failed_calls"] == 3                        # tasks 0 and 2 mid-way, 3 last
    assert drafting["approval_rate"] == pytest.approx(1 / 4)
    assert triage["cost_per_task_usd"]["p95"] >= triage["cost_per_task_usd"]["mean"] > 0
    assert triage["time_to_resolution_s"]["mean"] > 0 and triage["tasks_per_hour"] > 0
    metrics = await scrape(served.base + "/v1")
    for name, row in kpis.items():
        cost, failures = from_prometheus(metrics, name)
        assert cost == pytest.approx(row["cost_per_task_usd"]["mean"], rel=1e-6)
        assert failures == pytest.approx(row["failure_rate"], abs=1e-6)
    assert total(metrics, "podium_task_escalated_total", workflow="triage") == TRIAGE
    assert total(metrics, "podium_task_approval_total", workflow="drafting") == 1
    assert total(metrics, "podium_workflow_calls_total", workflow="drafting",
                 result="held") == 1

    tasks = (await admin_json(served.base, "/admin/spend?group_by=task&limit=100"))["data"]
    assert len(tasks) == TRIAGE + DRAFTING and {t["calls"] for t in tasks} == {5}
    assert {t["owner"] for t in tasks} == {"team:support"}
    ended = sorted(t["task"] for t in tasks if t["ended_in_error"])
    assert ended == ["drafting-3", "triage-0", "triage-3"]
    assert sum(t["cost_usd"] for t in tasks if t["workflow"] == "triage") == pytest.approx(
        triage["cost_usd"])


async def _at_least(base: str, n: int) -> bool:
    finished = await finished_tasks(base)
    assert finished <= n, "a task was counted twice: finished early"
    return finished == n


async def test_a_tasks_calls_are_one_trace_or_linked(served: Served) -> None:
    client = served.client()
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    for i in range(3):
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": f"traced {i}"}],
            extra_headers={"x-podium-task": "traced", "traceparent": parent})
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": f"linked {i}"}],
            extra_headers={"x-podium-task": "linked", "x-podium-workflow": "triage"})
    servers = [s for s in served.spans.get_finished_spans()
               if s.name == "POST /v1/chat/completions"]
    traced = [s for s in servers if (s.attributes or {}).get("podium.task.id") == "traced"]
    linked = [s for s in servers if (s.attributes or {}).get("podium.task.id") == "linked"]
    assert {s.context.trace_id for s in traced} == {int("ab" * 16, 16)}  # one trace
    assert all(not s.links for s in traced)
    first, *later = sorted(linked, key=lambda s: s.start_time or 0)
    assert len({s.context.trace_id for s in linked}) == 3   # three traces ...
    assert not first.links and all(                          # ... linked to the first call
        [(link.context.trace_id, link.context.span_id) for link in s.links]
        == [(first.context.trace_id, first.context.span_id)] for s in later)
    assert all((s.attributes or {})["podium.workflow"] == "triage" for s in linked)


# ---- the dashboard, in Chromium ------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from browser(tmp_path_factory)


@pytest.fixture
async def page(chromium: str) -> AsyncIterator[Page]:
    async with open_page(chromium) as tab:
        yield tab


WORKFLOW_TABLE = """(() => Object.fromEntries([...document.querySelectorAll(
  '#workflows .wf-row[data-workflow]')].map((row) => [row.dataset.workflow,
  Object.fromEntries([...row.querySelectorAll('[data-kpi]')].map(
    (c) => [c.dataset.kpi, c.dataset.value === '' ? null : Number(c.dataset.value)]))])))()"""


@pytest.mark.timeout(300, func_only=True)
@pytest.mark.provisioned("chromium")
async def test_the_dashboard_shows_the_same_cost_per_task_and_failure_rate(
        served: Served, page: Page, tmp_path: Path) -> None:
    await agent_traffic(served)
    await until(lambda: _at_least(served.base, TRIAGE + DRAFTING), "every task to finish")
    await page.navigate(served.base + "/dashboard")
    await page.wait_for("!!document.getElementById('key')", "the login form")
    await page.evaluate(f"document.getElementById('key').value = {json.dumps(ADMIN)};"
                        "document.querySelector('#login button').click(); true")
    shown = await page.wait_for(
        f"(t => Object.keys(t).length === 2 && t.triage.tasks === {TRIAGE} && "
        f"t.drafting.tasks === {DRAFTING} && t)({WORKFLOW_TABLE})", "the workflows panel")
    kpis = {r["workflow"]: r for r in
            (await admin_json(served.base, "/admin/spend?group_by=workflow"))["data"]}
    metrics = await scrape(served.base + "/v1")
    for name in ("triage", "drafting"):
        cost, failures = from_prometheus(metrics, name)
        assert shown[name]["cost_mean"] == pytest.approx(cost, rel=1e-6)
        assert shown[name]["cost_mean"] == pytest.approx(
            kpis[name]["cost_per_task_usd"]["mean"], rel=1e-6)
        assert shown[name]["failure_rate"] == pytest.approx(failures, abs=1e-6)
        assert shown[name]["failure_rate"] == pytest.approx(kpis[name]["failure_rate"], abs=1e-6)
    assert await page.wait_for(
        "Number(document.getElementById('chart-task-cost').dataset.series) === 2 && "
        "Number(document.getElementById('chart-task-failures').dataset.series) === 2",
        "the task charts")
    await page.screenshot(tmp_path / "workflows.png")
    assert page.errors() == [], "no script errors, no CSP violations"
