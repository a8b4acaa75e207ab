"""Who is calling and which named policy applies: bearer API keys mapped to tenants.

Keys are stored as SHA-256 hashes in the policy file and compared in constant
time. A request without a key is anonymous (if the policy allows it); a key
that matches no tenant is a 401; asking for a policy the caller may not use is
a 403. Nothing in the request body can claim another tenant's rights: only the
key decides the tenant.

Errors: :class:`Unauthenticated` (no usable key), :class:`NotPermitted` (a policy
the tenant may not use), and :class:`~edgeroute.oip.OIPError` for a malformed
``parameters.policy``; the ingress answers each (:mod:`router.errors`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from edgeroute.oip import OIPError
from router.policy import PolicyDocument, RoutingPolicy, hash_key

ANONYMOUS = "anonymous"


class Unauthenticated(Exception):
    """The request carries no key where one is required, or a key that matches no tenant."""


class NotPermitted(Exception):
    """The caller's tenant may not use the policy it asked for."""


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
    raise Unauthenticated("invalid API key")


def resolve(document: PolicyDocument, authorization: str | None, requested: object) -> Caller:
    """The caller's tenant and the named policy to route with, or an error saying why not."""
    if authorization:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("Authorization must be 'Bearer <api key>'")
        tenant, default, allowed = _tenant_for(document, key.strip())
    elif document.anonymous.allowed:
        tenant, default = ANONYMOUS, document.anonymous.policy
        allowed = (default, *document.anonymous.allowed_policies)
    else:
        raise Unauthenticated("an API key is required (Authorization: Bearer <key>)")
    if requested is None:
        name = default
    elif not isinstance(requested, str):
        raise OIPError("parameters.policy must be a string")
    elif requested not in document.policies:
        known = ", ".join(sorted(document.policies))
        raise OIPError(f"unknown policy {requested!r}; known: {known}")
    elif requested not in allowed:
        raise NotPermitted(f"policy {requested!r} is not allowed for {tenant}")
    else:
        name = requested
    return Caller(tenant, name, document.policies[name])
