"""``edgeroute policy show | diff | rollback``: the running policy, and the ones before it.

The router keeps the last applied policies per replica (digest, time, source;
``GET /v1/policy``), with the tenants' key hashes left out of every view. So
that a rollback can re-apply a policy whole, ``edgeroute policy apply`` also
keeps each document it applied next to the state file
(``<state dir>/policies/<sha256>.json``, owner-only); the policy ``edgeroute
up`` started with is in the state file itself. ``rollback`` re-applies the
previous policy through the same path as ``apply``.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from edgeroute.tools import router_api
from router.policy import PolicyDocument, policy_digest
from router.policy_keeper import redacted


def store_dir(state_file: str | Path) -> Path:
    return Path(state_file).parent / "policies"


def remember(store: Path, document: PolicyDocument) -> Path:
    """Keep an applied document (it holds key hashes: readable by its owner only)."""
    store.mkdir(parents=True, exist_ok=True)
    path = store / f"{policy_digest(document)}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(document.model_dump_json(indent=2) + "\n")
    return path


def recall(store: Path, state: dict[str, Any], sha256: str) -> PolicyDocument | None:
    """The whole document of an applied policy, from the store or the state file."""
    candidates: list[Any] = []
    if (store / f"{sha256}.json").exists():
        candidates.append(json.loads((store / f"{sha256}.json").read_text()))
    for deployment in state.get("serve_config", {}).get("applications", [{}])[0].get(
            "deployments", []):
        candidates.append((deployment.get("user_config") or {}).get("policy"))
    for raw in candidates:
        try:
            document = PolicyDocument.model_validate(raw)
        except ValueError:
            continue
        if policy_digest(document) == sha256:
            return document
    return None


def _when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch_s, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _text(document: dict[str, Any]) -> list[str]:
    return yaml.safe_dump(redacted(document), sort_keys=True).splitlines(keepends=True)


def show(state: dict[str, Any], console: Console, *, as_json: bool) -> None:
    from edgeroute.tools.policy_cli import say

    view = router_api.get(state, "/v1/policy")
    if as_json:
        print(json.dumps(view, indent=2))
        return
    say(console, f"# replica {view.get('replica')}")
    say(console, "# " + router_api.policy_line(view))
    for entry in view.get("history", []):
        say(console, f"#   {entry['sha256'][:12]}  applied {_when(entry['applied_at'])}  "
                     f"from {entry['source']}")
    if view.get("policy") is not None:
        say(console, "".join(_text(view["policy"])).rstrip("\n"))


def diff(state: dict[str, Any], console: Console, *, file: Path | None,
         previous: int | None) -> bool:
    """Print a unified diff from the running policy to ``file`` or to the ``previous``-th
    policy before it; True when they differ. Key hashes are not shown: a change that only
    touches them is reported as such."""
    from edgeroute.tools.policy_cli import PolicyError, load, say

    view = router_api.get(state, "/v1/policy")
    if view.get("policy") is None:
        raise PolicyError("the router has no valid policy in force to compare with")
    if file is not None:
        other = load(file, allow_defaults=True)
        other_doc, other_digest, label = other.model_dump(mode="json"), policy_digest(other), \
            str(file)
    else:
        history = router_api.get(state, "/v1/policy/history").get("history", [])
        n = previous or 1
        if len(history) <= n:
            raise PolicyError(f"the answering replica keeps {len(history)} applied "
                              f"policies; there is no {n} before the one in force")
        entry = history[n]
        other_doc, other_digest = entry["policy"], entry["sha256"]
        label = f"{other_digest[:12]} (applied {_when(entry['applied_at'])})"
    if other_digest == view["sha256"]:
        say(console, f"no difference: {label} is the policy in force ({other_digest[:12]})")
        return False
    lines = list(difflib.unified_diff(_text(view["policy"]), _text(other_doc),
                                      fromfile=f"running {view['sha256'][:12]}", tofile=label))
    if not lines:
        say(console, f"only tenants' API key hashes differ ({view['sha256'][:12]} -> "
                     f"{other_digest[:12]})")
    else:
        say(console, "".join(lines).rstrip("\n"))
    return True


def rollback(state: dict[str, Any], console: Console, *, store: Path,
             to: str | None) -> str:
    """Undo the last policy change through the same path as ``apply``: re-apply the policy
    before the one in force or, when the last policy sent was rejected, the one in force
    (so that the Serve config holds it again); with ``to``, the kept policy whose digest
    starts with it."""
    from edgeroute.tools.policy_cli import PolicyError, apply_document, say

    view = router_api.get(state, "/v1/policy")
    history = view.get("history", [])
    rejected = view.get("rejected") or {}
    if to is None and history and rejected.get("rejected_at", 0) >= history[0]["applied_at"]:
        target = history[0]["sha256"]
        say(console, f"the last policy sent ({rejected['sha256'][:12]}) was rejected; "
                     f"re-applying the one in force")
    elif to is None:
        if len(history) < 2:
            raise PolicyError("no earlier policy on record on the answering replica")
        target = history[1]["sha256"]
    else:
        matches = {e["sha256"] for e in history if e["sha256"].startswith(to)}
        if len(matches) != 1:
            raise PolicyError(f"{len(matches)} kept policies match {to!r}")
        (target,) = matches
    document = recall(store, state, target)
    if document is None:
        raise PolicyError(f"policy {target[:12]} was not applied from here (not in {store} "
                          "or the state file); apply its file with `edgeroute policy apply`")
    say(console, f"rolling back to policy {target[:12]} ...")
    return apply_document(document, state, console, store=store,
                          source=f"edgeroute policy rollback to {target[:12]}")


def add_parsers(actions: argparse._SubParsersAction, state_file: str) -> None:  # type: ignore[type-arg]
    show_p = actions.add_parser("show", help="the policy in force, its history and the last "
                                             "rejected one")
    show_p.add_argument("--json", action="store_true")
    diff_p = actions.add_parser("diff", help="unified diff from the running policy to a file "
                                             "or an earlier policy")
    which = diff_p.add_mutually_exclusive_group(required=True)
    which.add_argument("file", nargs="?", help="a policy YAML")
    which.add_argument("--previous", type=int, metavar="N",
                       help="the N-th policy applied before the one in force")
    rollback_p = actions.add_parser("rollback", help="re-apply the policy before the one "
                                                     "in force")
    rollback_p.add_argument("--to", metavar="SHA256", help="a kept policy's digest (prefix)")
    for parser in (show_p, diff_p, rollback_p):
        parser.add_argument("--state-file", default=state_file)


def run(args: argparse.Namespace, console: Console) -> int:
    from edgeroute.tools.cli import read_state

    state = read_state(args.state_file)
    if args.action == "show":
        show(state, console, as_json=args.json)
    elif args.action == "diff":
        diff(state, console, file=Path(args.file) if args.file else None,
             previous=args.previous)
    elif args.action == "rollback":
        rollback(state, console, store=store_dir(args.state_file), to=args.to)
    return 0
