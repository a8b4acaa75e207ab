"""A two-node Ray cluster (``ray.cluster_utils.Cluster``) for the node-removal scenario.

Run as ``python -m tests.chaos.cluster``: it starts the head node, prints
``@cluster address <gcs address>``, then obeys one command per line on stdin,
answering one ``@cluster`` line each: ``wait-router`` (until Serve runs the router, so that it is
placed on the head node), ``add`` (a worker node carrying :data:`RESOURCE`,
which the cloud deployment requires), ``remove`` (that node, ungracefully, as
a lost machine). End of input shuts the cluster down. A process of its own
keeps the test process free of a Ray driver.
"""

from __future__ import annotations

import os
import sys
import time

RESOURCE = "cloud_node"
OBJECT_STORE_BYTES = 100 * 1024 * 1024
PREFIX = "@cluster"
"""Answers start with this; anything else on stdout is Ray talking."""


def say(*words: str) -> None:
    print(PREFIX, *words, flush=True)


def _router_running(deadline_s: float) -> str:
    from ray import serve

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            app = serve.status().applications.get("edgeroute")
            router = app.deployments.get("router") if app else None
            if router is not None and router.replica_states.get("RUNNING", 0) > 0:
                return "router running"
        except Exception:  # Serve not started yet
            pass
        time.sleep(0.5)
    return "router not running"


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_worker_niceness", "0")

    import ray
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray.cluster_utils import Cluster

    # ray.init makes the token of a new local cluster; Cluster() starts its GCS without
    # that step, and a GCS with token auth and no token aborts. Make it as ray.init would
    # (~/.ray/auth_token), which the stack that joins this cluster reads too.
    ensure_token_if_auth_enabled()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    say("address", cluster.address)
    node = None
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "wait-router":
                say(_router_running(180))
            elif command == "add":
                node = cluster.add_node(num_cpus=1, resources={RESOURCE: 1},
                                        object_store_memory=OBJECT_STORE_BYTES)
                say("added")
            elif command == "remove" and node is not None:
                cluster.remove_node(node, allow_graceful=False)
                node = None
                say("removed")
            else:
                say(f"unknown command {command!r}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
