"""Hop 3, permissions: who is calling + what the request carries → a `PermissionScope`.

The request's data class is the highest of the team's default, the caller's declaration
(`x-podium-data-class`), and what the PII detector finds when `pii.action` is `route`. A
deployment may receive the request only if its `data_clearance` is at least that class and its
region is allowed. The router filters on the scope; the attempt loop asks it again immediately
before each upstream call (`check`), and asks it for the body to send (`body_for`), which is the
pseudonymized body for deployments not cleared for PII.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import PIIConfig
from gateway.errors import BadRequest, PermissionDenied
from gateway.observability.hops import HopRecord
from gateway.pipeline.identity import Principal
from gateway.pipeline.ingress import ChatCompletionRequest
from gateway.pipeline.messages import SENT, Kind, request_strings, rewrite_request
from gateway.pipeline.pii import Pseudonymizer, scan
from routing.catalog import Deployment

DATA_CLASSES = ("public", "internal", "confidential", "restricted")
RANK = {name: i for i, name in enumerate(DATA_CLASSES)}
DATA_CLASS_HEADER = "x-podium-data-class"
# The strings scanned for personal data, and masked where the scope says so.
# Every string that reaches the upstream is scanned for personal data, and masked where masking
# applies: the messages, tool descriptions, `user`, `metadata`, `prediction`.
SCANNED: frozenset[Kind] = SENT


@dataclass
class PermissionScope:
    data_class: str
    reasons: list[str]
    regions: frozenset[str] | None = None
    findings: dict[str, int] = field(default_factory=dict)
    mask_below: str | None = None            # pseudonymize for clearances below this class
    pseudonymizer: Pseudonymizer | None = None

    @property
    def routing_key(self) -> tuple[object, ...]:
        """Everything `refusal` depends on: plans are reused between equal keys."""
        return self.data_class, self.regions

    def refusal(self, dep: Deployment, extra_regions: frozenset[str] | None = None) -> str | None:
        """Why `dep` may not receive this request, or None."""
        if RANK[dep.data_clearance] < RANK[self.data_class]:
            return f"cleared for {dep.data_clearance}, request is {self.data_class}"
        for allowed in (self.regions, extra_regions):
            if allowed is not None and dep.region not in allowed:
                return f"region {dep.region or 'unset'} not in allowed {sorted(allowed)}"
        return None

    def check(self, dep: Deployment) -> None:
        """The final guard, right before the upstream call."""
        reason = self.refusal(dep)
        if reason:
            raise PermissionDenied(f"Deployment {dep.id!r} may not receive this request: "
                                   f"{reason}.", code="data_class_not_cleared")

    def masks_for(self, dep: Deployment) -> bool:
        return (self.pseudonymizer is not None and self.mask_below is not None
                and RANK[dep.data_clearance] < RANK[self.mask_below])

    def body_for(self, dep: Deployment, body: Mapping[str, Any]) -> Mapping[str, Any]:
        pseudonymizer = self.pseudonymizer
        if pseudonymizer is None or not self.masks_for(dep):
            return body
        return rewrite_request(body, SCANNED, lambda text: pseudonymizer.mask(text.value))


def scope_attributes(span: HopRecord, scope: PermissionScope) -> None:
    """The hop's decision on its span: the class, why, and how much PII (counts, never values)."""
    if span.is_recording():
        span.set_attributes({"podium.data_class": scope.data_class,
                             "podium.data_class.reasons": scope.reasons,
                             "podium.pii.pseudonymize": scope.pseudonymizer is not None})
        for kind, count in scope.findings.items():
            span.set_attribute(f"podium.pii.{kind}", count)


async def resolve_scope(principal: Principal, chat: ChatCompletionRequest,
                        body: Mapping[str, Any], headers: Mapping[str, str],
                        pii: PIIConfig) -> PermissionScope:
    check_tools(principal, chat)
    scope = _declared_scope(principal, headers)
    if pii.enabled:
        texts = [t.value for t in request_strings(body, SCANNED)]
        await _apply_pii(scope, texts, pii, maskable=True)
    return scope


async def resolve_embedding_scope(principal: Principal, texts: list[str],
                                  headers: Mapping[str, str], pii: PIIConfig,
                                  ) -> PermissionScope:
    """The scope of an embeddings request. Masking would change the vectors, so where chat
    pseudonymizes, embeddings are routed instead: only deployments cleared for `pii.data_class`
    may embed text that carries personal data, and with none the request is refused (403)."""
    scope = _declared_scope(principal, headers)
    if pii.enabled:
        await _apply_pii(scope, texts, pii, maskable=False)
    return scope


def _declared_scope(principal: Principal, headers: Mapping[str, str]) -> PermissionScope:
    scope = PermissionScope(data_class=principal.data_class, regions=principal.regions,
                            reasons=[f"team default {principal.data_class}"])
    declared = _declared_class(headers)
    if declared is not None:
        _raise_to(scope, declared, f"declared {declared}")
    return scope


def check_tools(principal: Principal, chat: ChatCompletionRequest) -> None:
    allowed = principal.allowed_tools
    if allowed is None:
        return
    names = [t.function.name for t in chat.tools or () if t.function is not None]
    names += [f.name for f in chat.functions or ()]
    names += [t.type for t in chat.tools or () if t.function is None]
    for name in names:
        if name not in allowed:
            raise PermissionDenied(f"The tool {name!r} is not allowed for this team.",
                                   param="tools", code="tool_not_allowed")


def _declared_class(headers: Mapping[str, str]) -> str | None:
    value = next((v for k, v in headers.items() if k.lower() == DATA_CLASS_HEADER), None)
    if value is None:
        return None
    if value.strip().lower() not in RANK:
        raise BadRequest(f"Header {DATA_CLASS_HEADER} must be one of {', '.join(DATA_CLASSES)}.",
                         param=DATA_CLASS_HEADER)
    return value.strip().lower()


def _raise_to(scope: PermissionScope, data_class: str, reason: str) -> None:
    scope.reasons.append(reason)
    if RANK[data_class] > RANK[scope.data_class]:
        scope.data_class = data_class


async def _apply_pii(scope: PermissionScope, texts: list[str], pii: PIIConfig, *,
                     maskable: bool) -> None:
    counts: dict[str, int] = {}
    found = await scan(texts, pii.kinds)  # linear, and yields to the loop on long texts
    for findings in found:
        for finding in findings:
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
    scope.findings = counts
    if not counts:
        return
    summary = ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items()))
    if pii.action == "block":
        raise BadRequest(f"The request contains personal data or secrets ({summary}); "
                         "this gateway blocks them.", code="pii_detected")
    if pii.action == "route" or not maskable:
        _raise_to(scope, pii.data_class, f"pii {summary} → {pii.data_class}")
    else:
        scope.reasons.append(f"pii {summary} → pseudonymized below {pii.data_class}")
        scope.mask_below = pii.data_class
        known = dict(zip(texts, found, strict=True))
        scope.pseudonymizer = Pseudonymizer(kinds=pii.kinds, known=known)
        await scope.pseudonymizer.prepare(t for t, f in known.items() if f)
