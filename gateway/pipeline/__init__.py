"""The hops of a request, one module each, in request order (docs/architecture.md):

    ingress       the body → a typed request that keeps the original
    identity      a bearer key or JWT → Principal (with auth, jwt_auth)
    permissions   data class, regions, PII → PermissionScope (with pii, unmask)
    route         Planner: permissions then the router → RoutePlan (and the explanation)
    cache         the exact cache and, beside it, the semantic cache
    egress        JSON or SSE, and the x-podium-* headers

`context` is the request that the hops fill in turn; `messages` is the one walker over the
strings a request carries. The call itself (hop 7) is `routing/fallback.py`.
"""
