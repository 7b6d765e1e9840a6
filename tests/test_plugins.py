"""The plugin framework: a third-party plugin, built and installed as a real package in the
test, found through the `podium.plugins` entry point group and run in the chain."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from textwrap import dedent

import openai
import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import GatewayFactory, Upstream, base_config

PLUGIN = '''
from gateway.errors import PodiumError


class Refused(PodiumError):
    status, type, code = 403, "permission_error", "stamp_refused"


class StampPlugin:
    """Refuses requests containing a configured word; records every model it sees."""

    name = "stamp"

    def __init__(self, forbidden: str) -> None:
        self.forbidden = forbidden

    async def on_request(self, ctx):
        if self.forbidden in str(ctx.body.get("messages")):
            raise Refused(f"the stamp plugin refuses {self.forbidden!r}")
        ctx.decide(self.name, "stamped", ctx.model)
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    src = tmp_path_factory.mktemp("src")
    (src / "podium_stamp.py").write_text(PLUGIN)
    (src / "pyproject.toml").write_text(dedent('''
        [build-system]
        requires = ["setuptools", "wheel"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "podium-stamp"
        version = "1.0"
        [project.entry-points."podium.plugins"]
        stamp = "podium_stamp:StampPlugin"
        [tool.setuptools]
        py-modules = ["podium_stamp"]
    '''))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                   check=True, capture_output=True, timeout=120)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield
    sys.path.remove(str(target))
    sys.modules.pop("podium_stamp", None)


async def test_third_party_plugin_runs_in_the_chain(installed: None, upstream: Upstream,
                                                    make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["plugins"] = [{"name": "stamp", "options": {"forbidden": "xyzzy"}}]
    gw = await make_gateway(config)
    assert gw.gateway.runtime.chain.names[:2] == ["stamp", "rate_limit"]
    client = gw.client()
    ok = await client.chat.completions.create(model="chat",
                                              messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content.startswith("Simulated answer")
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "say xyzzy"}])
    assert info.value.body == {  # the SDK unwraps {"error": {...}}
        "message": "the stamp plugin refuses 'xyzzy'", "type": "permission_error",
        "param": None, "code": "stamp_refused"}
    assert len(upstream.models_called()) == 1
    # Its hook is a hop of both requests' traces.
    spans = [s for s in gw.spans.get_finished_spans()
             if "podium.hop.plugin.stamp.on_request.ms" in (s.attributes or {})]
    assert len(spans) == 2


def test_unknown_plugin_is_a_config_error() -> None:
    config = base_config("http://127.0.0.1:9/v1")
    config["plugins"] = ["no-such-plugin"]
    with pytest.raises(ConfigError) as info:
        parse_config(config, env={})
    assert info.value.problems[0].startswith("plugins[0].name: unknown plugin 'no-such-plugin'")


async def test_builtin_order_can_be_set(upstream: Upstream,
                                        make_gateway: GatewayFactory) -> None:
    config = base_config(upstream.url)
    config["plugins"] = ["audit", "budget"]
    config["guardrails"] = [{"name": "g", "type": "blocklist", "words": ["x"]}]
    gw = await make_gateway(config)
    assert gw.gateway.runtime.chain.names == ["audit", "budget", "guardrails", "rate_limit"]
