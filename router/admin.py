"""The router's admin surface: who may use it, and what its views and changes answer.

Every admin route needs ``Authorization: Bearer <admin token>`` (the stack
config's ``router.admin_token`` or the replica's ``EDGEROUTE_ADMIN_TOKEN``);
without a configured token the admin routes are closed. The views also take the
read-only ops token (``router.ops_token`` or ``EDGEROUTE_OPS_TOKEN``). The views are
``GET /v1/policy`` (the policy in force, its history and the last rejected
one), ``GET /v1/policy/history`` and ``GET /v1/targets``; the changes are
``PUT /v1/links/{target}``, ``POST /v1/targets/{target}/{drain|undrain|reset}`` and
``DELETE /v1/targets/{target}`` (a configured edge or external target taken out).
No view carries a tenant's key hash. Like every learned state, a change reaches the
router replica that answered it (``replica`` in the answer).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from edgeroute.config import LinkProfile
from edgeroute.http import error_response
from edgeroute.oip import OIPError
from router.estimator import TargetEstimator
from router.fleet_actor import FleetSync
from router.models import ModelServices
from router.policy_keeper import PolicyKeeper
from router.service import RoutingService
from router.targets import Target

log = logging.getLogger("ray.serve")


def bearer_ok(request: Request, token: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (never, without a token)."""
    supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return token is not None and secrets.compare_digest(supplied.encode(), token.encode())


def refuse_non_admin(request: Request, token: str | None, ops_token: str | None = None, *,
                     view: bool = False) -> Response | None:
    """A 401 unless the request carries the admin token, or for a ``view`` the read-only
    ops token (a 403 for a change asked with it); ``None`` lets it through."""
    if bearer_ok(request, token) or (view and bearer_ok(request, ops_token)):
        return None
    if bearer_ok(request, ops_token):
        return error_response(OIPError("the ops token is read-only: this change needs the "
                                       "admin token", status=403))
    why = "admin token required" if token else "admin routes are closed: no admin token is set"
    return error_response(OIPError(why, status=401))


def policy_view(keeper: PolicyKeeper, replica: str) -> dict[str, Any]:
    return {**keeper.view(), "replica": replica}


def policy_summary(keeper: PolicyKeeper) -> dict[str, Any]:
    """What ``GET /v1/targets`` says of the policy: its digest and the last rejection."""
    view = keeper.view()
    return {"sha256": view["sha256"], "applied_at": view["applied_at"],
            "rejected": view["rejected"]}


def without_policy(keeper: PolicyKeeper) -> Response | None:
    """The 503 for inference on a replica whose only policy was refused (it has none to
    say who may call); ``None`` while a policy is in force."""
    rejected = keeper.rejected
    if keeper.in_force is not None or rejected is None:
        return None
    return error_response(OIPError(
        f"no valid routing policy in force: policy {rejected.sha256[:12]} was rejected "
        f"({'; '.join(rejected.reasons)[:300]})", status=503), {"retry-after": "5"})


async def set_link(models: ModelServices, name: str, request: Request,
                   replica: str) -> Response:
    """Replace fields of a target's emulated link with the JSON object in the body; the
    link is the target's, whichever model a call runs."""
    targets = [t for service in models.with_target(name)
               if (t := service.targets.get(name)) is not None]
    if not targets:
        return error_response(OIPError(f"unknown target '{name}'", status=404))
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object")
        profile = LinkProfile.model_validate({**targets[0].link.profile.model_dump(), **changes})
    except (ValueError, ValidationError) as exc:
        return error_response(OIPError(f"invalid link settings: {exc}"))
    for target in targets:
        target.link.profile = profile
    log.info("link of %s set to %s", name, profile.model_dump())
    return JSONResponse({"target": name, "link_emulation": profile.model_dump(),
                         "replica": replica})


def target_action(services: Sequence[RoutingService], name: str, action: str,
                  fresh: Callable[[Target], TargetEstimator], replica: str) -> Response:
    """``drain`` (no new request goes to the target; calls in flight finish), ``undrain``,
    or ``reset`` (forget its estimates and breaker history, as for a worker that joined
    anew), in the service of every model that has the target; the first one answers."""
    answers = [_target_action(service, name, action, fresh, replica) for service in services]
    return answers[0]


def _target_action(service: RoutingService, name: str, action: str,
                   fresh: Callable[[Target], TargetEstimator], replica: str) -> Response:
    try:
        if action in ("drain", "undrain"):
            service.drain(name, drained=action == "drain")
        elif action == "reset":
            target = service.targets.get(name)
            if target is None:
                raise KeyError(name)
            service.reset(name, fresh(target))
        else:
            return error_response(OIPError(
                f"unknown action '{action}': use drain, undrain or reset", status=404))
    except KeyError:
        return error_response(OIPError(f"unknown target '{name}'", status=404))
    log.info("target %s: %s", name, action)
    return JSONResponse({"target": name, "action": action, "replica": replica,
                         "drained": name in service.drained,
                         "in_flight": service.targets.in_flight(name)})


def remove_target(models: ModelServices, syncs: Sequence[FleetSync], name: str, *,
                  cloud: str, replica: str) -> Response:
    """Take a configured edge or external target out of this replica, for every model: no
    new decision uses it, calls in flight finish (its fleet sync closes its connections
    once idle). The cloud deployment belongs to the Serve application, and a fleet member
    leaves by itself."""
    if name == cloud:
        return error_response(OIPError(
            f"'{name}' is the cloud deployment of the Serve application", status=409))
    if any(name in sync.members for sync in syncs):
        return error_response(OIPError(
            f"'{name}' is a fleet member: it leaves when it stops (DELETE /v1/fleet/{name})",
            status=409))
    removed = [(sync, target) for served, sync in zip(models, syncs, strict=True)
               if (target := served.service.remove_target(name)) is not None]
    if not removed:
        return error_response(OIPError(f"unknown target '{name}'", status=404))
    for sync, target in removed:
        sync.retired.append(target)
    log.info("target %s removed", name)
    return JSONResponse({"target": name, "removed": True, "replica": replica})
