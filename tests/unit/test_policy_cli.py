"""The operator's commands against a router's answers and against policy files.

The router is a small real HTTP server here that answers what a test tells it
(a 5xx, a body that is not JSON, the policy views): every answer gives a one-line
message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from edgeroute.tools import router_api
from edgeroute.tools.cli import main
from edgeroute.tools.policy_history import recall, remember
from router.policy import PolicyDocument, Tenant, hash_key, policy_digest
from router.policy_keeper import PolicyKeeper

TOKEN = "adm1n"
Answer = tuple[int, str, bytes]
"""Status, content type and body the fake router answers."""


@contextmanager
def fake_router(answer: Callable[[str, dict[str, str]], Answer]) -> Iterator[str]:
    """A router stand-in on a free port; ``answer(path, headers)`` decides each reply."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, content_type, body = answer(self.path, dict(self.headers.items()))
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def state_file(tmp_path: Path, endpoint: str) -> Path:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"endpoint": endpoint, "admin_token": TOKEN}))
    return path


def one_line_failure(capsys: pytest.CaptureFixture[str], code: int) -> str:
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("status", "content_type", "body", "expected"), [
    (500, "text/plain", b"Internal Server Error", "answered 500 to GET /v1/targets: "
                                                  "Internal Server Error"),
    (503, "application/json", b'{"error": "no replica"}', "answered 503 to GET /v1/targets: "
                                                          "no replica"),
    (200, "text/html", b"<html>proxy page</html>", "not a JSON object: <html>proxy page"),
    (200, "application/json", b"[1, 2]", "not a JSON object"),
    (502, "text/html", b"", "answered 502 to GET /v1/targets: (empty body)"),
])
def test_targets_survives_any_router_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            status: int, content_type: str, body: bytes,
                                            expected: str) -> None:
    with fake_router(lambda path, headers: (status, content_type, body)) as endpoint:
        code = main(["targets", "--state-file", str(state_file(tmp_path, endpoint))])
    assert expected in one_line_failure(capsys, code)


def test_targets_says_when_the_router_cannot_be_reached(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fake_router(lambda path, headers: (200, "application/json", b"{}")) as endpoint:
        pass  # closed: nothing listens there any more
    code = main(["targets", "--state-file", str(state_file(tmp_path, endpoint))])
    assert f"could not reach the router at {endpoint}" in one_line_failure(capsys, code)


def test_the_admin_views_are_asked_with_the_state_files_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"targets": []})

    state = {"endpoint": "http://router", "admin_token": TOKEN}
    assert router_api.get(state, "/v1/targets", transport=httpx.MockTransport(handler)) == {
        "targets": []}
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_targets_reports_a_rejected_policy(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    keeper = PolicyKeeper()
    keeper.offer({"policy": PolicyDocument().model_dump(mode="json")})
    keeper.offer({"policy": {"policies": {"default": {"risk_budget": 5}}},
                  "source": "serve deploy"})
    view = keeper.view()
    snapshot = {"targets": [], "policy": {k: view[k] for k in ("sha256", "applied_at",
                                                                 "rejected")}}
    with fake_router(lambda path, headers: (200, "application/json",
                                            json.dumps(snapshot).encode())) as endpoint:
        code = main(["targets", "--state-file", str(state_file(tmp_path, endpoint))])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert f"policy {view['sha256'][:12]} in force" in out
    assert f"policy {view['rejected']['sha256'][:12]} was REJECTED (serve deploy)" in out
    assert "policies.default.risk_budget" in out


def validate(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[int, str]:
    code = main(["policy", "validate", str(path), *flags])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, " ".join((out + err).split())


def test_broken_yaml_is_reported_with_its_line_and_column(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\npolicies:\n  default: {risk_budget: 0.1\nretry: [\n")
    code, text = validate(capsys, path)
    assert code == 1
    assert f"{path}:4:" in text and "not valid YAML" in text


def test_validation_messages_keep_their_brackets(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    document = PolicyDocument().model_dump(mode="json")
    document["tenants"] = [{"name": "Bad Name", "key_sha256": "0" * 64,
                            "default_policy": "default", "allowed_policies": ["default"]}]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    code, text = validate(capsys, path)
    assert code == 1
    assert "'^[a-z0-9][a-z0-9-]{0,62}$'" in text


@pytest.mark.parametrize("content", ["", "# only a comment\n", "{}\n"])
def test_an_empty_policy_is_refused_unless_defaults_are_allowed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(content)
    code, text = validate(capsys, path)
    assert code == 1 and "is empty" in text and "--allow-defaults" in text
    code, text = validate(capsys, path, "--allow-defaults")
    assert code == 0 and f"sha256 {policy_digest(PolicyDocument())[:12]}" in text


def test_a_policy_that_is_not_a_mapping_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("- a\n- b\n")
    code, text = validate(capsys, path)
    assert code == 1 and "a policy is a YAML mapping, not list" in text


def tenant_policy(key: str, risk_budget: float = 0.01) -> PolicyDocument:
    document = PolicyDocument().model_dump(mode="json")
    document["policies"]["default"]["risk_budget"] = risk_budget
    document["tenants"] = [Tenant(name="acme", key_sha256=hash_key(key),
                                  default_policy="default",
                                  allowed_policies=("default",)).model_dump(mode="json")]
    return PolicyDocument.model_validate(document)


@contextmanager
def router_running(*applied: PolicyDocument) -> Iterator[str]:
    """A fake router whose policy views are a real :class:`PolicyKeeper`'s, after
    ``applied`` (oldest first); the views need the admin token."""
    keeper = PolicyKeeper()
    for document in applied:
        keeper.offer({"policy": document.model_dump(mode="json"), "source": "test"})

    def answer(path: str, headers: dict[str, str]) -> Answer:
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, "application/json", b'{"error": "admin token required"}'
        view = keeper.view() if path == "/v1/policy" else {"history": keeper.history_view()}
        return 200, "application/json", json.dumps(view).encode()

    with fake_router(answer) as endpoint:
        yield endpoint


def test_show_prints_the_running_policy_and_its_history_without_key_hashes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tenant_policy("er_one", 0.01), tenant_policy("er_two", 0.05)
    with router_running(first, second) as endpoint:
        code = main(["policy", "show", "--state-file", str(state_file(tmp_path, endpoint))])
    out = capsys.readouterr().out
    assert code == 0
    assert "risk_budget: 0.05" in out
    assert policy_digest(first)[:12] in out and policy_digest(second)[:12] in out
    assert hash_key("er_one") not in out and hash_key("er_two") not in out


def test_diff_shows_what_a_file_would_change(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    running = tenant_policy("er_one", 0.01)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(tenant_policy("er_one", 0.03).model_dump(mode="json")))
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(running.model_dump(mode="json")))
    rotated = tmp_path / "rotated.yaml"
    rotated.write_text(yaml.safe_dump(tenant_policy("er_new", 0.01).model_dump(mode="json")))
    with router_running(running) as endpoint:
        state = str(state_file(tmp_path, endpoint))
        outputs = []
        for path in (changed, same, rotated):
            assert main(["policy", "diff", str(path), "--state-file", state]) == 0
            outputs.append(capsys.readouterr().out)
    assert "-    risk_budget: 0.01" in outputs[0] and "+    risk_budget: 0.03" in outputs[0]
    assert "no difference" in outputs[1]
    assert "only tenants' API key hashes differ" in outputs[2]
    assert hash_key("er_new") not in "".join(outputs)


def test_diff_against_the_previous_policy(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with router_running(tenant_policy("k", 0.01), tenant_policy("k", 0.02)) as endpoint:
        state = str(state_file(tmp_path, endpoint))
        assert main(["policy", "diff", "--previous", "1", "--state-file", state]) == 0
        out = capsys.readouterr().out
        assert "-    risk_budget: 0.02" in out and "+    risk_budget: 0.01" in out
        assert main(["policy", "diff", "--previous", "2", "--state-file", state]) == 1
        assert "no 2 before the one in force" in capsys.readouterr().out


def test_rollback_without_an_earlier_policy_says_so(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with router_running(tenant_policy("k")) as endpoint:
        code = main(["policy", "rollback", "--state-file", str(state_file(tmp_path, endpoint))])
    assert code == 1
    assert "no earlier policy on record" in capsys.readouterr().out


def test_rollback_of_a_policy_applied_elsewhere_names_the_way_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with router_running(tenant_policy("k", 0.01), tenant_policy("k", 0.02)) as endpoint:
        code = main(["policy", "rollback", "--state-file", str(state_file(tmp_path, endpoint))])
    assert code == 1
    assert "was not applied from here" in " ".join(capsys.readouterr().out.split())


def test_applied_documents_are_kept_whole_and_private(tmp_path: Path) -> None:
    document = tenant_policy("er_key")
    path = remember(tmp_path / "policies", document)
    assert path.stat().st_mode & 0o077 == 0
    assert recall(tmp_path / "policies", {}, policy_digest(document)) == document
    state: dict[str, Any] = {"serve_config": {"applications": [{"deployments": [
        {"name": "router", "user_config": {"policy": document.model_dump(mode="json")}}]}]}}
    assert recall(tmp_path / "elsewhere", state, policy_digest(document)) == document
    assert recall(tmp_path / "elsewhere", {}, policy_digest(document)) is None


def test_apply_without_a_stack_started_by_up_says_what_to_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(PolicyDocument().model_dump(mode="json")))
    state = state_file(tmp_path, "http://127.0.0.1:9")
    assert main(["policy", "apply", str(policy), "--state-file", str(state)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "names no Ray address or Serve config" in out and "Traceback" not in out


def test_a_state_file_without_an_endpoint_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state.json"
    path.write_text("{}")
    code = main(["targets", "--state-file", str(path)])
    assert "names no router endpoint" in one_line_failure(capsys, code)


def test_up_refuses_an_empty_policy_file_before_starting_anything(tmp_path: Path) -> None:
    empty = tmp_path / "policy.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(SystemExit, match="is empty"):
        main(["up", "--policy", str(empty), "--state-file", str(tmp_path / "state.json")])
    assert not (tmp_path / "state.json").exists()


def test_rollback_after_a_rejection_re_applies_the_policy_in_force(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tenant_policy("k", 0.01), tenant_policy("k", 0.02)
    keeper = PolicyKeeper()
    for document in (first, second):
        keeper.offer({"policy": document.model_dump(mode="json")})
    keeper.offer({"policy": {"policies": {}}})
    remember(tmp_path / "policies", second)
    with fake_router(lambda path, headers: (200, "application/json",
                                            json.dumps(keeper.view()).encode())) as endpoint:
        state = state_file(tmp_path, endpoint)
        code = main(["policy", "rollback", "--state-file", str(state)])
    out = " ".join(capsys.readouterr().out.split())
    assert "was rejected; re-applying the one in force" in out
    assert code == 1 and "names no Ray address" in out  # it went on to apply `second`
