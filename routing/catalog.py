"""Configuration, stage two: `model_list` compiled once into immutable `Deployment`s.

Every per-request question the router asks (price, window, capabilities, group membership) is
answered here at load time, so a request costs dict lookups, not config walks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from gateway.config import GatewayConfig, ModelEntry, deployment_ids
from gateway.config_server import ServerConfig
from routing import pricemap

ALL_CAPABILITIES = frozenset({"tools", "json_schema", "vision", "streaming"})

# litellm's provider prefixes → OpenTelemetry GenAI `gen_ai.provider.name` values.
_GENAI_PROVIDER = {
    "openai": "openai", "azure": "azure.ai.openai", "azure_ai": "azure.ai.inference",
    "anthropic": "anthropic", "bedrock": "aws.bedrock", "vertex_ai": "gcp.vertex_ai",
    "gemini": "gcp.gemini", "cohere": "cohere", "mistral": "mistral_ai", "groq": "groq",
    "deepseek": "deepseek", "xai": "x_ai", "watsonx": "ibm.watsonx.ai", "perplexity": "perplexity",
}


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    group: str
    litellm_model: str          # what litellm is asked for, e.g. "openai/gpt-4o-mini"
    upstream_model: str         # what the upstream sees in `model`, e.g. "gpt-4o-mini"
    provider: str               # gen_ai.provider.name
    api_base: str | None
    api_key: str | None = field(repr=False)
    timeout_s: float
    quality: int
    input_cost_per_token: float
    output_cost_per_token: float
    max_input_tokens: int | None
    max_output_tokens: int | None
    supports: frozenset[str]
    data_clearance: str
    region: str | None
    mode: str
    extra_params: Mapping[str, Any]
    server_address: str | None
    server_port: int | None
    # What one answer from it may be (server.max_response_bytes), and how long its stream may
    # go without a chunk (server.stream_idle_timeout_s).
    max_response_bytes: int = 64 * 1024 * 1024
    stream_idle_s: float = 120.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_cost_per_token
                + completion_tokens * self.output_cost_per_token)


def compile_deployment(entry: ModelEntry, dep_id: str, default_timeout_s: float,
                       server: ServerConfig | None = None) -> Deployment:
    params, info = entry.litellm_params, entry.model_info
    known = pricemap.lookup(params.model)
    prefix, _, rest = params.model.partition("/")
    provider_key = prefix if rest else str(known.get("litellm_provider", "openai"))
    address, port = _address(params.api_base)
    extra = {k: v for k, v in (params.model_extra or {}).items()}
    return Deployment(
        id=dep_id, group=entry.model_name, litellm_model=params.model,
        upstream_model=rest or params.model,
        provider=_GENAI_PROVIDER.get(provider_key, provider_key),
        api_base=params.api_base,
        api_key=params.api_key.get_secret_value() if params.api_key else None,
        timeout_s=params.timeout or default_timeout_s,
        quality=info.quality,
        input_cost_per_token=_price(info.input_cost_per_token, known, "input_cost_per_token"),
        output_cost_per_token=_price(info.output_cost_per_token, known, "output_cost_per_token"),
        max_input_tokens=info.max_input_tokens or known.get("max_input_tokens"),
        max_output_tokens=info.max_output_tokens or known.get("max_output_tokens"),
        supports=_capabilities(info.supports, known),
        data_clearance=info.data_clearance, region=info.region, mode=info.mode,
        extra_params=MappingProxyType(extra), server_address=address, server_port=port,
        **_limits(server or ServerConfig()),
    )


def _limits(server: ServerConfig) -> dict[str, Any]:
    return {"max_response_bytes": server.max_response_bytes,
            "stream_idle_s": server.stream_idle_timeout_s}


def _price(configured: float | None, known: Mapping[str, Any], name: str) -> float:
    if configured is not None:
        return configured
    value = known.get(name)
    return float(value) if isinstance(value, int | float) else 0.0


def _capabilities(configured: tuple[str, ...] | None, known: Mapping[str, Any]) -> frozenset[str]:
    if configured is not None:
        return frozenset(configured)
    if not known:
        # A model litellm does not know (a local server, a fine-tune): assume it can do what it
        # is asked; the upstream's own error decides, and `supports:` narrows it explicitly.
        return ALL_CAPABILITIES
    caps = {"streaming"}
    if known.get("supports_function_calling"):
        caps.add("tools")
    if known.get("supports_response_schema"):
        caps.add("json_schema")
    if known.get("supports_vision"):
        caps.add("vision")
    return frozenset(caps)


def _address(api_base: str | None) -> tuple[str | None, int | None]:
    if not api_base:
        return None, None
    parts = urlsplit(api_base)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    return parts.hostname, port


@dataclass(frozen=True)
class Catalog:
    deployments: tuple[Deployment, ...]
    by_id: Mapping[str, Deployment]
    groups: Mapping[str, tuple[Deployment, ...]]

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> Catalog:
        timeout = cfg.server.attempt_timeout_s
        deps = tuple(compile_deployment(e, i, timeout, cfg.server)
                     for e, i in zip(cfg.model_list, deployment_ids(cfg), strict=True))
        groups: dict[str, list[Deployment]] = {}
        for dep in deps:
            groups.setdefault(dep.group, []).append(dep)
        return cls(deployments=deps, by_id=MappingProxyType({d.id: d for d in deps}),
                   groups=MappingProxyType({g: tuple(v) for g, v in groups.items()}))

    def secrets(self) -> tuple[str, ...]:
        """Provider keys, so that error text can be scrubbed of them before anyone sees it."""
        return tuple(d.api_key for d in self.deployments if d.api_key)
