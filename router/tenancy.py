"""Who is calling and which named policy applies: bearer API keys mapped to tenants.

Keys are stored as SHA-256 hashes in the policy file and compared in constant
time. A request without a key is anonymous (if the policy allows it); a key
that matches no tenant is a 401; asking for a policy the caller may not use is
a 403. Nothing in the request body can claim another tenant's rights: only the
key decides the tenant.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from edgeroute.oip import OIPError
from router.policy import PolicyDocument, RoutingPolicy, hash_key

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    tenant: str
    policy_name: str
    policy: RoutingPolicy


def _tenant_for(document: PolicyDocument, api_key: str) -> tuple[str, str, tuple[str, ...]]:
    digest = hash_key(api_key)
    for tenant in document.tenants:
        if hmac.compare_digest(digest, tenant.key_sha256):
            return tenant.name, tenant.default_policy, tenant.allowed_policies
    raise OIPError("invalid API key", status=401)


def resolve(document: PolicyDocument, authorization: str | None, requested: object) -> Caller:
    """The caller's tenant and the named policy to route with, or a 4xx saying why not."""
    if authorization:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise OIPError("Authorization must be 'Bearer <api key>'", status=401)
        tenant, default, allowed = _tenant_for(document, key.strip())
    elif document.anonymous.allowed:
        tenant, default = ANONYMOUS, document.anonymous.policy
        allowed = (default, *document.anonymous.allowed_policies)
    else:
        raise OIPError("an API key is required (Authorization: Bearer <key>)", status=401)
    if requested is None:
        name = default
    elif not isinstance(requested, str):
        raise OIPError("parameters.policy must be a string")
    elif requested not in document.policies:
        known = ", ".join(sorted(document.policies))
        raise OIPError(f"unknown policy {requested!r}; known: {known}")
    elif requested not in allowed:
        raise OIPError(f"policy {requested!r} is not allowed for {tenant}", status=403)
    else:
        name = requested
    return Caller(tenant, name, document.policies[name])
