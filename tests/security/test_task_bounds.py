"""Task and workflow tags come from callers: they cannot blow up label cardinality, memory,
the logs, or another team's numbers.

- A task id is refused (400, OpenAI's shape) unless it is 1-128 safe characters.
- A workflow the config does not declare is counted as `other`: thousands of made-up names
  add no series.
- Thousands of task ids keep at most `tasks.max_open` tasks in memory (the one idle longest is
  finished early and counted); no metric is labelled by task id.
- Two teams using the same task id have two tasks.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import openai
import pytest

from gateway.runtime import GATEWAY, Gateway
from tests.conftest import ADMIN, APP_KEY, GatewayFactory, Upstream, base_config
from tests.support.metrics import scrape, total

OTHER_KEY = "sk-test-other-team-0123456789"
HI = [{"role": "user", "content": "hi"}]


def config(url: str) -> dict[str, Any]:
    cfg = base_config(url)
    cfg["keys"].append({"key": OTHER_KEY, "name": "other-app", "team": "research"})
    cfg["teams"] = [{"name": "support"}, {"name": "research"}]
    cfg["workflows"] = [{"name": "triage"}]
    cfg["tasks"] = {"max_open": 50, "idle_s": 3600}
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    cfg["cache"] = {"enabled": False}
    return cfg


@pytest.mark.parametrize("task_id", ["", " leading-space", "a" * 129, "new\nline", "ümlaut",
                                     "semi;colon", "-starts-with-dash", "x" * 5000])
async def test_a_bad_task_id_is_refused(upstream: Upstream, make_gateway: GatewayFactory,
                                        task_id: str) -> None:
    running = await make_gateway(config(upstream.url))
    async with aiohttp.ClientSession() as session, session.post(
            running.url + "/chat/completions", json={"model": "chat", "messages": HI,
                                                      "metadata": {"podium_task": task_id}},
            headers={"Authorization": f"Bearer {APP_KEY}"}) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "metadata.podium_task"
    assert task_id not in body["error"]["message"] or task_id == ""


async def test_a_bad_task_header_is_refused(upstream: Upstream,
                                            make_gateway: GatewayFactory) -> None:
    running = await make_gateway(config(upstream.url))
    with pytest.raises(openai.BadRequestError) as refused:
        await running.client().chat.completions.create(
            model="chat", messages=HI, extra_headers={"x-podium-task": "a" * 129})
    assert refused.value.body["param"] == "x-podium-task"  # type: ignore[index]


async def test_made_up_workflows_and_task_ids_add_no_series_and_stay_bounded(
        upstream: Upstream, make_gateway: GatewayFactory) -> None:
    running = await make_gateway(config(upstream.url))
    client = running.client()

    async def flood(worker: int) -> None:
        for i in range(worker, 400, 8):
            await client.chat.completions.create(model="chat", messages=HI, extra_headers={
                "x-podium-task": uuid.uuid4().hex, "x-podium-workflow": f"made-up-{i}"})
    await asyncio.gather(*(flood(w) for w in range(8)))
    gw: Gateway = running.server.app[GATEWAY]
    series = len(await scrape(running.url))
    assert len(gw.tasks.tasks) == 50 and gw.tasks.evicted == 350
    after = await scrape(running.url)
    workflows = {dict(labels).get("workflow") for (name, labels) in after
                 if name.startswith(("podium_task", "podium_workflow"))} - {None}
    assert workflows == {"other"}
    assert not any("task" in dict(labels) for (_, labels) in after)
    assert total(after, "podium_tasks_evicted_total") == 350
    assert total(after, "podium_tasks_total", workflow="other") == 350  # finished early
    assert total(after, "podium_workflow_calls_total", workflow="other") == 400
    assert len(after) == series
    await asyncio.gather(*(flood(w) for w in range(8)))      # 400 more names: no new series
    assert len(await scrape(running.url)) == series and len(gw.tasks.tasks) == 50


async def test_the_same_task_id_in_two_teams_is_two_tasks(upstream: Upstream,
                                                         make_gateway: GatewayFactory) -> None:
    running = await make_gateway(config(upstream.url))
    for key in (APP_KEY, OTHER_KEY, APP_KEY):
        await running.client(key).chat.completions.create(
            model="chat", messages=HI, extra_headers={"x-podium-task": "shared-id",
                                                      "x-podium-workflow": "triage"})
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s, \
            s.get(running.url.removesuffix("/v1") + "/admin/spend?group_by=task") as resp:
        tasks = {t["owner"]: t["calls"] for t in (await resp.json())["data"]}
    assert tasks == {"team:support": 2, "team:research": 1}
