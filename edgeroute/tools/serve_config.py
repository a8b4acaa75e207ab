"""The Serve application as a declarative config, and deploying it the way ``serve deploy`` does.

:func:`serve_config` turns a stack config and a policy into a Ray Serve
``ServeDeploySchema`` document: the app is built by ``router.app:app_builder``
from the stack config, and the policy travels as the router deployment's
``user_config``. Logs are JSON lines that carry Serve's request id. Deploying a
document that differs only in ``user_config``
updates the running router replicas in place (``reconfigure()``, same
processes), which is how a policy is applied live without dropping requests.

:func:`deploy` hands the document to the Serve controller through the same
client call the dashboard's REST endpoint (``serve deploy``) makes, so it
works on a cluster started without the dashboard too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeroute.config import StackConfig

APP_NAME = "edgeroute"
IMPORT_PATH = "router.app:app_builder"
ROUTER = "router"


def serve_config(config: StackConfig, policy: dict[str, Any]) -> dict[str, Any]:
    """A ``ServeDeploySchema`` document for the stack (validated by Ray when deployed)."""
    cloud = config.cloud
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": config.host, "port": config.port},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": "/",
            "import_path": IMPORT_PATH,
            "logging_config": {"encoding": "JSON", "log_level": "INFO"},
            "args": {"config": config.model_dump(mode="json")},
            "deployments": [
                {
                    "name": ROUTER,
                    "num_replicas": config.router.num_replicas,
                    "user_config": {"policy": policy},
                },
                *({
                    "name": config.cloud_deployment(model.name),
                    "autoscaling_config": cloud.autoscaling.model_dump(exclude_none=True),
                    "ray_actor_options": {"num_cpus": cloud.num_cpus,
                                          "num_gpus": cloud.num_gpus,
                                          "resources": cloud.resources},
                } for model in config.models),
            ],
        }],
    }


TOKEN_ENV = {"admin_token": "EDGEROUTE_ADMIN_TOKEN", "ops_token": "EDGEROUTE_OPS_TOKEN",
             "fleet_token": "EDGEROUTE_FLEET_TOKEN"}
"""Where a router replica looks for a token its config leaves null (its process environment,
inherited from the Ray node)."""


def without_tokens(config: StackConfig) -> tuple[StackConfig, dict[str, str]]:
    """The config with its router tokens taken out, and the environment that carries them.

    Serve writes an application's arguments to its logs; tokens passed through the
    Ray node's environment (set before Ray starts) stay out of them."""
    router = config.router
    env = {var: getattr(router, field) for field, var in TOKEN_ENV.items()
           if getattr(router, field)}
    stripped = router.model_copy(update=dict.fromkeys(TOKEN_ENV))
    return config.model_copy(update={"router": stripped}), env


def with_policy(document: dict[str, Any], policy: dict[str, Any],
                source: str | None = None) -> dict[str, Any]:
    """The same document with only the router's ``user_config`` replaced; ``source`` says
    where the policy came from (the router keeps it in its policy history)."""
    updated = json.loads(json.dumps(document))
    user_config: dict[str, Any] = {"policy": policy}
    if source:
        user_config["source"] = source
    for deployment in updated["applications"][0]["deployments"]:
        if deployment["name"] == ROUTER:
            deployment["user_config"] = user_config
    return updated


def deploy(document: dict[str, Any], timeout_s: float = 120.0) -> None:
    """Start Serve if needed and apply the document; returns once the app is running."""
    import time

    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    schema = ServeDeploySchema.model_validate(document)
    client = serve_start(http_options=schema.http_options.model_dump(),
                         proxy_location=schema.proxy_location)
    client.deploy_apps(schema)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == ApplicationStatus.RUNNING:
            return
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"Serve could not deploy {APP_NAME}: {status.message}")
        time.sleep(0.25)
    raise TimeoutError(f"{APP_NAME} was not running {timeout_s:.0f} s after deploying")


def write(document: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
