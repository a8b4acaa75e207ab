"""``edgeroute policy ...``: validate, apply live, explain and describe routing policies."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from edgeroute.contract import FEATURES, INPUT_NAME, MODEL_NAME
from edgeroute.dataset import digits_split
from edgeroute.tools import router_api
from router.policy import PolicyDocument, hash_key, new_api_key, policy_digest
from router.policy_keeper import raw_digest, reasons

APPLY_TIMEOUT_S = 90.0


class PolicyError(Exception):
    """A policy file that does not validate, or a stack that did not take the policy."""


EMPTY = ("{path} is empty: it would run every default (anonymous callers allowed, no "
         "tenants). Write the settings you mean; to run the embedded default on purpose, "
         "pass --allow-defaults (policy validate, policy apply)")


def _yaml_error(path: Path, exc: yaml.YAMLError) -> PolicyError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return PolicyError(f"{where}: not valid YAML: {problem}" + (f" ({context})" if context
                                                                else ""))


def load(path: Path, *, allow_defaults: bool = False) -> PolicyDocument:
    """The validated policy in ``path``, or a :class:`PolicyError` saying what is wrong and
    where (YAML errors with line and column). An empty file is refused unless
    ``allow_defaults``."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read it: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    if raw is None or raw == {}:
        if not allow_defaults:
            raise PolicyError(EMPTY.format(path=path))
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: a policy is a YAML mapping, not {type(raw).__name__}")
    try:
        return PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"{path} is not a valid policy:\n  " + "\n  ".join(reasons(exc))
                          ) from None


def say(console: Console, text: str, style: str | None = None) -> None:
    """Print ``text`` as it is: policy messages hold regexes and brackets that console
    markup would eat."""
    console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def validate(path: Path, console: Console, *, allow_defaults: bool = False) -> None:
    document = load(path, allow_defaults=allow_defaults)
    say(console, f"{path}: valid (sha256 {policy_digest(document)[:12]}); policies: "
                 f"{', '.join(document.policies)}; tenants: {len(document.tenants)}")


def apply(path: Path, state: dict[str, Any], console: Console, *,
          allow_defaults: bool = False, store: Path | None = None) -> str:
    """Validate locally, then :func:`apply_document`. An invalid file never leaves here."""
    document = load(path, allow_defaults=allow_defaults)
    say(console, f"{path}: valid; applying policy {policy_digest(document)[:12]} ...")
    return apply_document(document, state, console, source=f"edgeroute policy apply {path}",
                          store=store)


def apply_document(document: PolicyDocument, state: dict[str, Any], console: Console, *,
                   source: str, store: Path | None = None) -> str:
    """Redeploy with only the router's ``user_config`` changed, and wait until the router
    reports the new policy in force (or that it refused it). Kept in ``store`` for
    ``policy rollback``."""
    if not state.get("ray_address") or not state.get("serve_config"):
        raise PolicyError("the state file names no Ray address or Serve config: apply works "
                          "on a stack `edgeroute up` started; elsewhere deploy a Serve config "
                          "printed by `edgeroute infra serve-config`")
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported
    import ray

    from edgeroute.tools.policy_history import remember
    from edgeroute.tools.serve_config import deploy, with_policy

    digest = policy_digest(document)
    sent = document.model_dump(mode="json")
    try:
        ray.init(address=state["ray_address"], namespace="edgeroute",
                 logging_level=logging.WARNING, log_to_driver=False)
        deploy(with_policy(state["serve_config"], sent, source))
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise PolicyError(f"could not deploy policy {digest[:12]}: {exc}") from None
    finally:
        ray.shutdown()
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            live = router_api.get(state, "/v1/policy", timeout_s=5)
        except router_api.RouterError:
            live = {}
        if live.get("sha256") == digest:
            if store is not None:
                remember(store, document)
            say(console, f"policy {digest[:12]} is in force")
            return digest
        rejected = live.get("rejected") or {}
        if rejected.get("sha256") == raw_digest(sent):
            raise PolicyError(f"the router refused policy {digest[:12]}: "
                              + "; ".join(rejected.get("reasons", [])))
        time.sleep(0.5)
    raise PolicyError(f"the router did not report policy {digest[:12]} within "
                      f"{APPLY_TIMEOUT_S:.0f} s")


def explain(state: dict[str, Any], console: Console, *, deadline_ms: float, quality: str,
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
    document = router_api.call(state, "POST", f"/v2/models/{MODEL_NAME}/infer", json=body,
                               headers=headers, admin=False, timeout_s=30)
    params = document.get("parameters", {})
    explanation = params.get("explanation", {})
    table = Table(title=f"decision for deadline {deadline_ms:g} ms, quality={quality}, "
                        f"policy {explanation.get('policy', '?')}")
    for column in ("plan", "p50 ms", "p99 ms", "P(miss)", "cost $", "verdict"):
        table.add_column(column, justify="left" if column in ("plan", "verdict") else "right")
    for c in explanation.get("candidates", []):
        table.add_row(c["plan"], f"{c['p50_ms']:.1f}", f"{c['p99_ms']:.1f}",
                      f"{c['p_miss']:.4f}", f"{c['cost_usd']:.3g}", c["verdict"])
    console.print(table)
    say(console, f"reason: {explanation.get('reason')}\nserved by {params.get('target')} "
                 f"({params.get('tier')}) in {params.get('attempts')} attempt(s)")
    return document


def schema() -> str:
    return json.dumps(PolicyDocument.model_json_schema(), indent=2)


def new_key(tenant: str) -> dict[str, str]:
    """A fresh API key and the hash to paste into the policy file's tenant entry."""
    key = new_api_key()
    return {"tenant": tenant, "api_key": key, "key_sha256": hash_key(key)}


def run_policy(args: argparse.Namespace) -> int:
    """The ``edgeroute policy`` subcommands."""
    from edgeroute.tools import policy_history
    from edgeroute.tools.cli import read_state

    console = Console()
    try:
        if args.action == "validate":
            validate(Path(args.file), console, allow_defaults=args.allow_defaults)
        elif args.action == "apply":
            apply(Path(args.file), read_state(args.state_file), console,
                  allow_defaults=args.allow_defaults,
                  store=policy_history.store_dir(args.state_file))
        elif args.action == "explain":
            explain(read_state(args.state_file), console, deadline_ms=args.deadline_ms,
                    quality=args.quality, policy=args.policy, api_key=args.api_key)
        elif args.action == "schema":
            print(schema())
        elif args.action == "key":
            print(json.dumps(new_key(args.tenant), indent=2))
        else:
            return policy_history.run(args, console)
    except PolicyError as exc:
        say(console, str(exc), style="red")
        return 1
    return 0


def policy_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from edgeroute.tools.cli import DEFAULT_STATE_FILE
    from edgeroute.tools.policy_history import add_parsers

    policy = sub.add_parser("policy", help="validate, apply live, explain routing policies")
    actions = policy.add_subparsers(dest="action", required=True)
    validate = actions.add_parser("validate", help="check a policy file; exit 1 with reasons")
    validate.add_argument("file")
    apply = actions.add_parser("apply", help="apply a policy file to the running stack")
    apply.add_argument("file")
    apply.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    for parser in (validate, apply):
        parser.add_argument("--allow-defaults", action="store_true",
                            help="accept an empty file (the embedded default policy)")
    explain = actions.add_parser("explain", help="the decision table for a sample request")
    explain.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    explain.add_argument("--deadline-ms", type=float, default=250.0)
    explain.add_argument("--quality", choices=("any", "high"), default="any")
    explain.add_argument("--policy", help="a named policy (default: the caller's default)")
    explain.add_argument("--api-key", help="a tenant's API key")
    actions.add_parser("schema", help="print the policy JSON Schema")
    key = actions.add_parser("key", help="make an API key and the hash for a tenant entry")
    key.add_argument("tenant")
    add_parsers(actions, str(DEFAULT_STATE_FILE))
    policy.set_defaults(func=run_policy)
