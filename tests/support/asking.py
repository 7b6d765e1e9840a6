"""Asking a running gateway which deployment answers, and why (`/v1/route/explain`)."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import APP_KEY, RunningGateway

HI = [{"role": "user", "content": "hi"}]


async def explain(gw: RunningGateway, body: dict[str, Any], key: str = APP_KEY,
                  headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            gw.url + "/route/explain", json=body,
            headers={"Authorization": f"Bearer {key}", **(headers or {})}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def answered_by(gw: RunningGateway, key: str = APP_KEY, **kwargs: Any) -> str:
    kwargs.setdefault("messages", HI)
    raw = await gw.client(key).chat.completions.with_raw_response.create(**kwargs)
    return raw.headers["x-podium-deployment"]
