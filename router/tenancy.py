"""Who is calling and which named policy applies: bearer API keys mapped to tenants.

Keys are stored as SHA-256 hashes in the policy file and compared in constant
time. A request without a key is anonymous (if the policy allows it); a key
that matches no tenant is a 401; asking for a policy the caller may not use is
a 403. Nothing in the request body can claim another tenant's rights: only the
key decides the tenant.

The policy document's per-model defaults (``models:``) then narrow the chosen policy
for the request's model: its default deadline and the tiers it may run on.

Errors: :class:`Unauthenticated` (no usable key), :class:`NotPermitted` (a policy
the tenant may not use, or a request the model's allowed tiers leave no way to
serve), and :class:`~edgeroute.oip.OIPError` for a malformed ``parameters.policy``;
the ingress answers each (:mod:`router.errors`).
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


def resolve(document: PolicyDocument, authorization: str | None, requested: object,
            model: str | None = None) -> Caller:
    """The caller's tenant and the named policy to route with, narrowed by ``model``'s
    defaults, or an error saying why not."""
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
    return Caller(tenant, name, for_model(document, document.policies[name], name, model))


def for_model(document: PolicyDocument, policy: RoutingPolicy, name: str,
              model: str | None) -> RoutingPolicy:
    """``policy`` (named ``name``) as it applies to ``model``: the model's default deadline
    and its tiers, or :class:`NotPermitted` where none of the policy's tiers is left."""
    defaults = document.models.get(model) if model else None
    if defaults is None:
        return policy
    update: dict[str, object] = {}
    if defaults.deadline_ms is not None:
        update["default_deadline_ms"] = defaults.deadline_ms
    if defaults.tiers is not None:
        tiers = tuple(t for t in policy.allowed_tiers if t in defaults.tiers)
        pinned = {"always-edge": "edge", "always-cloud": "cloud"}.get(policy.strategy)
        if not tiers or (pinned is not None and pinned not in tiers):
            wanted = list(policy.allowed_tiers) if pinned is None else [pinned]
            raise NotPermitted(f"policy {name!r} routes to {wanted} but model {model!r} may "
                               f"run on {list(defaults.tiers)} only")
        update["allowed_tiers"] = tiers
    return policy.model_copy(update=update)


def check_quality(caller: Caller, quality: str, model: str) -> None:
    """A ``quality=high`` request needs a high-quality tier among those allowed: refuse it
    (:class:`NotPermitted`) when the model's tiers leave none."""
    policy = caller.policy
    if quality == "high" and not set(policy.high_quality_tiers) & set(policy.allowed_tiers):
        raise NotPermitted(
            f"quality=high runs on {list(policy.high_quality_tiers)} but model {model!r} may "
            f"run on {list(policy.allowed_tiers)} only under policy {caller.policy_name!r}")
