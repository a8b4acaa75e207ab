"""``edgeroute jobs``: batch jobs on a running router.

* ``edgeroute jobs submit FILE.npy --model digits --deadline 1h [--out result.npy]``: send
  every row of ``FILE.npy`` as one job (binary tensors), show its progress until it ends,
  and write the result (one output to ``.npy``, every output to ``.npz``);
* ``edgeroute jobs list``: the caller's jobs, newest first;
* ``edgeroute jobs status ID``: one job's progress (JSON);
* ``edgeroute jobs cancel ID``.

The router is the one of the state file ``edgeroute up`` wrote (or ``--endpoint``); the
tenant's API key comes from ``--api-key`` or ``EDGEROUTE_API_KEY`` (none: anonymous).
Failures are :class:`~edgeroute.tools.router_api.RouterError`: one line, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgeroute.oip import InferRequest, Tensor, decode_response, encode_request
from edgeroute.tools.router_api import RouterError

DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h)?\s*$")
UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
FINAL = ("done", "failed", "cancelled")
POLL_S = 0.5
TIMEOUT_S = 60.0


def parse_duration_s(text: str) -> float:
    """``1h``, ``30m``, ``90s``, ``500ms`` or plain seconds, in seconds."""
    match = DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 1h, 30m, 90s)")
    return float(match.group(1)) * UNITS_S[match.group(2)]


class Jobs:
    """The router's ``/v1/jobs`` routes, as the tenant of ``api_key``."""

    def __init__(self, endpoint: str, api_key: str | None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=endpoint, headers=headers, timeout=TIMEOUT_S,
                                   transport=transport)

    def request(self, method: str, path: str, ok: tuple[int, ...] = (200,),
                **options: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise RouterError(f"could not reach the router at {self.endpoint}: "
                              f"{type(exc).__name__}: {exc}") from None
        if response.status_code not in ok:
            try:
                detail = response.json().get("error", response.text)
            except ValueError:
                detail = response.text
            raise RouterError(f"the router answered {response.status_code} to {method} "
                              f"{path}: {str(detail)[:300]}")
        return response

    def submit(self, x: np.ndarray, model: str, deadline_s: float, quality: str) -> str:
        meta = self.request("GET", f"/v2/models/{model}").json()
        inputs = [entry["name"] for entry in meta.get("inputs", [])]
        if len(inputs) != 1:
            raise RouterError(f"model {model} takes {len(inputs)} inputs; jobs from one .npy "
                              "file need a model with one")
        request = InferRequest(inputs=(Tensor(inputs[0], x),), model_name=model,
                               parameters={"deadline_ms": deadline_s * 1000,
                                           "quality": quality},
                               binary_output_default=True)
        body, headers = encode_request(request, binary=True)
        answer = self.request("POST", "/v1/jobs", ok=(202,), content=body, headers=headers)
        return str(answer.json()["id"])

    def status(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/jobs/{job_id}").json())

    def result(self, job_id: str) -> dict[str, np.ndarray]:
        answer = self.request("GET", f"/v1/jobs/{job_id}/result")
        return {t.name: t.data for t in decode_response(answer.content, answer.headers).outputs}

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/v1/jobs/{job_id}", ok=(200, 202)).json())

    def list(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/jobs").json()["jobs"])


def follow(jobs: Jobs, job_id: str, rows: int) -> dict[str, Any]:
    """Poll the job until it ends, with a progress bar; its last status."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"))
    with Progress(*columns) as progress:
        bar = progress.add_task(f"job {job_id[:8]}", total=rows, note="")
        while True:
            status = jobs.status(job_id)
            eta = status.get("predicted_finish_at")
            note = f"{status['status']}, ${status['cost_usd']:.3g}"
            if eta and status["status"] == "running":
                note += f", ~{max(eta - time.time(), 0):.0f} s left"
            if status.get("will_miss_deadline"):
                note += ", WILL MISS ITS DEADLINE"
            progress.update(bar, completed=status["rows_done"], note=note)
            if status["status"] in FINAL:
                return status
            time.sleep(POLL_S)


def _save(result: dict[str, np.ndarray], out: Path, output: str | None) -> str:
    if out.suffix == ".npz":
        np.savez(out, **result)  # type: ignore[arg-type]
        return ", ".join(result)
    name = output or list(result)[-1]
    if name not in result:
        raise RouterError(f"no output {name!r} in the result ({', '.join(result)})")
    np.save(out, result[name])
    return name


def run(args: argparse.Namespace) -> int:
    from edgeroute.tools.cli import read_state

    endpoint = args.endpoint or str(read_state(args.state_file)["endpoint"])
    jobs = Jobs(endpoint, args.api_key or os.environ.get("EDGEROUTE_API_KEY"))
    if args.action == "list":
        for job in jobs.list():
            print(f"{job['id']}  {job['status']:<9}  {job['rows_done']:>8}/{job['rows']:<8}"
                  f"  ${job['cost_usd']:.3g}  {job['model_name']}"
                  + ("  will miss its deadline" if job["will_miss_deadline"] else ""))
        return 0
    if args.action == "status":
        print(json.dumps(jobs.status(args.id), indent=2))
        return 0
    if args.action == "cancel":
        print(json.dumps(jobs.cancel(args.id), indent=2))
        return 0
    x = np.load(args.file, allow_pickle=False)
    job_id = jobs.submit(x, args.model, args.deadline, args.quality)
    print(f"job {job_id} accepted ({len(x)} rows)")
    try:
        status = follow(jobs, job_id, len(x))
    except KeyboardInterrupt:
        print(f"stopped following; the job goes on (edgeroute jobs cancel {job_id})")
        return 130
    print(f"job {job_id} {status['status']}: {status['rows_done']} of {status['rows']} rows, "
          f"${status['cost_usd']:.6g}, placement {status['placement']}")
    if status["status"] != "done":
        return 1
    if args.out:
        names = _save(jobs.result(job_id), Path(args.out), args.output)
        print(f"wrote {names} to {args.out}")
    return 0


def jobs_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    jobs = sub.add_parser("jobs", help="batch jobs: submit rows with a long deadline, list, "
                                       "follow, cancel")
    actions = jobs.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="send a .npy file's rows as one job and follow it")
    submit.add_argument("file", help="rows to run, e.g. a float32 [N, 64] array for digits")
    submit.add_argument("--model", default="digits")
    submit.add_argument("--deadline", type=parse_duration_s, default=3600.0,
                        help="when the job must be done: 1h, 30m, 90s (default 1h)")
    submit.add_argument("--quality", choices=("any", "high"), default="any")
    submit.add_argument("--out", help="write the result: .npy (one output), .npz (all)")
    submit.add_argument("--output", help="with --out FILE.npy: the output to write "
                                         "(default: the model's last, digits' label)")
    actions.add_parser("list", help="your jobs, newest first")
    for action, text in (("status", "one job's progress"), ("cancel", "cancel a job")):
        actions.add_parser(action, help=text).add_argument("id")
    for parser in actions.choices.values():
        parser.add_argument("--state-file", default=".edgeroute/state.json")
        parser.add_argument("--endpoint", help="the router's URL (default: the state file's)")
        parser.add_argument("--api-key", help="the tenant's key (default: EDGEROUTE_API_KEY)")
    jobs.set_defaults(func=run)
