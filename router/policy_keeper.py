"""The policy a router replica runs, the ones it ran before, and the last one it refused.

A policy reaches a replica as the Router deployment's ``user_config`` (``edgeroute
policy apply``, ``serve deploy`` of a Serve config, a hand edit of ``user_config``).
:meth:`PolicyKeeper.offer` validates it and never raises: an invalid document
leaves the policy in force and is recorded as the last rejection (digest,
reasons, time), so that an operator mistake cannot take the router down (Serve
marks a deployment whose ``reconfigure()`` raises DEPLOY_FAILED and stops its
replicas).

A replica deployed without a ``user_config`` runs the embedded default policy.
A replica whose first policy was refused (it was started with an invalid one)
has no policy in force: it must not guess who may call, so the ingress refuses
inference with a 503 until a valid policy arrives (falling back to the embedded
default would let anonymous callers in where the operator's policy may have
shut them out).

Views of a policy never carry the tenants' key hashes (:func:`redacted`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from router.policy import PolicyDocument, policy_digest

HISTORY_LENGTH = 10
REDACTED = "<redacted>"


def raw_digest(document: object) -> str:
    """The SHA-256 of a document as sent (canonical JSON): it names a rejected policy,
    which has no validated form to digest."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def redacted(document: dict[str, Any]) -> dict[str, Any]:
    """A policy document (as JSON) with every tenant's ``key_sha256`` replaced."""
    tenants = document.get("tenants")
    if not isinstance(tenants, list | tuple):
        return document
    return {**document, "tenants": [
        {**t, "key_sha256": REDACTED} if isinstance(t, dict) and "key_sha256" in t else t
        for t in tenants]}


def reasons(error: ValidationError) -> list[str]:
    """One line per validation error: where in the document, and what is wrong."""
    return [f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
            for e in error.errors()]


@dataclass(frozen=True)
class Applied:
    sha256: str
    applied_at: float
    """Wall-clock seconds since the epoch."""
    source: str
    policy: PolicyDocument

    def view(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "applied_at": self.applied_at, "source": self.source}


@dataclass(frozen=True)
class Rejection:
    sha256: str
    rejected_at: float
    source: str
    reasons: tuple[str, ...]

    def view(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "rejected_at": self.rejected_at, "source": self.source,
                "reasons": list(self.reasons)}


class PolicyKeeper:
    """The policy in force on one replica, the last ``history_length`` applied (newest
    first) and the last rejected. Pure: the caller swaps the routing service's policy
    when :meth:`offer` returns one."""

    def __init__(self, *, history_length: int = HISTORY_LENGTH,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.history: deque[Applied] = deque(maxlen=history_length)
        self.rejected: Rejection | None = None
        self.wall_clock = wall_clock
        default = PolicyDocument()
        self.embedded = Applied(policy_digest(default), wall_clock(), "embedded default",
                                default)

    @property
    def in_force(self) -> Applied | None:
        """The newest applied policy; before any was offered, the embedded default; after
        only refused ones, none."""
        if self.history:
            return self.history[0]
        return None if self.rejected else self.embedded

    def offer(self, user_config: dict[str, Any]) -> PolicyDocument | None:
        """The validated policy of ``user_config`` to apply now, or ``None`` when it is
        refused (recorded in :attr:`rejected`; the policy in force stays).

        A missing or empty ``policy`` is refused too: it would mean every default
        (anyone may call), which a real policy file must say explicitly."""
        raw = user_config.get("policy") if isinstance(user_config, dict) else None
        source = str(user_config.get("source", "user_config")) if isinstance(
            user_config, dict) else "user_config"
        if not isinstance(raw, dict) or not raw:
            why = "user_config.policy is missing or empty: send the full policy document"
            self._reject(raw_digest(raw), source, [why])
            return None
        try:
            policy = PolicyDocument.model_validate(raw)
        except ValidationError as error:
            self._reject(raw_digest(raw), source, reasons(error))
            return None
        except (ValueError, TypeError) as error:  # a document pydantic could not even read
            self._reject(raw_digest(raw), source, [f"(document): {error}"])
            return None
        digest = policy_digest(policy)
        if self.history and self.history[0].sha256 == digest:
            return policy
        self.history.appendleft(Applied(digest, self.wall_clock(), source, policy))
        return policy

    def _reject(self, digest: str, source: str, why: list[str]) -> None:
        self.rejected = Rejection(digest, self.wall_clock(), source, tuple(why))

    def view(self) -> dict[str, Any]:
        """``GET /v1/policy``: the policy in force (key hashes redacted), its digest, when
        and from where it came, the earlier ones and the last rejection."""
        current = self.in_force
        return {
            "sha256": current.sha256 if current else None,
            "applied_at": current.applied_at if current else None,
            "source": current.source if current else None,
            "policy": redacted(current.policy.model_dump(mode="json")) if current else None,
            "history": [a.view() for a in self.history],
            "rejected": self.rejected.view() if self.rejected else None,
        }

    def history_view(self) -> list[dict[str, Any]]:
        """Every kept policy with its document (key hashes redacted), newest first."""
        return [{**a.view(), "policy": redacted(a.policy.model_dump(mode="json"))}
                for a in self.history]
