"""``edgeroute policy ...``: validate, apply live, explain and describe routing policies."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from edgeroute.contract import FEATURES, INPUT_NAME, MODEL_NAME
from edgeroute.dataset import digits_split
from router.policy import PolicyDocument, hash_key, new_api_key, policy_digest

APPLY_TIMEOUT_S = 90.0


class PolicyError(Exception):
    """A policy file that does not validate, or a stack that did not take the policy."""


def load(path: Path) -> PolicyDocument:
    try:
        return PolicyDocument.load(path)
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such file") from None
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
                 for e in exc.errors()]
        raise PolicyError(f"{path} is not a valid policy:\n  " + "\n  ".join(lines)) from None
    except ValueError as exc:
        raise PolicyError(f"{path} is not valid YAML: {exc}") from None


def validate(path: Path, console: Console) -> None:
    document = load(path)
    console.print(f"{path}: valid (sha256 {policy_digest(document)[:12]}); policies: "
                  f"{', '.join(document.policies)}; tenants: {len(document.tenants)}")


def apply(path: Path, state: dict[str, Any], console: Console) -> str:
    """Validate locally, redeploy with only the router's ``user_config`` changed, and wait
    until the router reports the new policy in force. An invalid file never leaves here."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported
    import ray

    from edgeroute.tools.serve_config import deploy, with_policy

    document = load(path)
    digest = policy_digest(document)
    console.print(f"{path}: valid; applying policy {digest[:12]} ...")
    ray.init(address=state["ray_address"], namespace="edgeroute", logging_level=logging.WARNING,
             log_to_driver=False)
    try:
        deploy(with_policy(state["serve_config"], document.model_dump(mode="json")))
    finally:
        ray.shutdown()
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            live = httpx.get(f"{state['endpoint']}/v1/policy", timeout=5).json()["sha256"]
        except (httpx.HTTPError, KeyError, ValueError):
            live = None
        if live == digest:
            console.print(f"policy {digest[:12]} is in force")
            return digest
        time.sleep(0.5)
    raise PolicyError(f"the router did not report policy {digest[:12]} within "
                      f"{APPLY_TIMEOUT_S:.0f} s")


def explain(endpoint: str, console: Console, *, deadline_ms: float, quality: str,
            policy: str | None, api_key: str | None) -> dict[str, Any]:
    """Send one held-out digit with ``explain=true`` and print the candidates table."""
    row = digits_split().x_test[0]
    parameters: dict[str, Any] = {"deadline_ms": deadline_ms, "quality": quality,
                                  "explain": True}
    if policy:
        parameters["policy"] = policy
    body = {"inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [1, FEATURES],
                        "data": row.tolist()}], "parameters": parameters}
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.post(f"{endpoint}/v2/models/{MODEL_NAME}/infer", json=body,
                          headers=headers, timeout=30)
    document = response.json()
    if response.status_code != 200:
        raise PolicyError(f"the router answered {response.status_code}: {document.get('error')}")
    params = document["parameters"]
    explanation = params.get("explanation", {})
    table = Table(title=f"decision for deadline {deadline_ms:g} ms, quality={quality}, "
                        f"policy {explanation.get('policy', '?')}")
    for column in ("plan", "p50 ms", "p99 ms", "P(miss)", "cost $", "verdict"):
        table.add_column(column, justify="left" if column in ("plan", "verdict") else "right")
    for c in explanation.get("candidates", []):
        table.add_row(c["plan"], f"{c['p50_ms']:.1f}", f"{c['p99_ms']:.1f}",
                      f"{c['p_miss']:.4f}", f"{c['cost_usd']:.3g}", c["verdict"])
    console.print(table)
    console.print(f"reason: {explanation.get('reason')}\nserved by {params['target']} "
                  f"({params['tier']}) in {params.get('attempts')} attempt(s)")
    return document


def schema() -> str:
    return json.dumps(PolicyDocument.model_json_schema(), indent=2)


def new_key(tenant: str) -> dict[str, str]:
    """A fresh API key and the hash to paste into the policy file's tenant entry."""
    key = new_api_key()
    return {"tenant": tenant, "api_key": key, "key_sha256": hash_key(key)}


def run_policy(args: argparse.Namespace) -> int:
    """The ``edgeroute policy`` subcommands."""
    from edgeroute.tools.cli import read_state

    console = Console()
    try:
        if args.action == "validate":
            validate(Path(args.file), console)
        elif args.action == "apply":
            apply(Path(args.file), read_state(args.state_file), console)
        elif args.action == "explain":
            explain(str(read_state(args.state_file)["endpoint"]), console,
                               deadline_ms=args.deadline_ms, quality=args.quality,
                               policy=args.policy, api_key=args.api_key)
        elif args.action == "schema":
            print(schema())
        elif args.action == "key":
            print(json.dumps(new_key(args.tenant), indent=2))
    except PolicyError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    return 0


def policy_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from edgeroute.tools.cli import DEFAULT_STATE_FILE

    policy = sub.add_parser("policy", help="validate, apply live, explain routing policies")
    actions = policy.add_subparsers(dest="action", required=True)
    validate = actions.add_parser("validate", help="check a policy file; exit 1 with reasons")
    validate.add_argument("file")
    apply = actions.add_parser("apply", help="apply a policy file to the running stack")
    apply.add_argument("file")
    apply.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    explain = actions.add_parser("explain", help="the decision table for a sample request")
    explain.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    explain.add_argument("--deadline-ms", type=float, default=250.0)
    explain.add_argument("--quality", choices=("any", "high"), default="any")
    explain.add_argument("--policy", help="a named policy (default: the caller's default)")
    explain.add_argument("--api-key", help="a tenant's API key")
    actions.add_parser("schema", help="print the policy JSON Schema")
    key = actions.add_parser("key", help="make an API key and the hash for a tenant entry")
    key.add_argument("tenant")
    policy.set_defaults(func=run_policy)
