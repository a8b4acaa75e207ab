"""The docs stay true to the software: the policy reference is generated, every command exists.

Each ``edgeroute ...`` line in a fenced code block must parse with the real
command-line parser (subcommand, flags and required arguments); each
``edgeroute ...`` in inline code must name commands that exist.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from edgeroute.tools.cli import build_parser
from edgeroute.tools.infra_gen import policy_reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`(edgeroute [^`]+)`")
CONTROL = {"|", "||", "&&", ";", "&"}
REDIRECT = {">", ">>", "<"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _shell_lines(block: str) -> list[str]:
    return [line.strip().removeprefix("$ ") for line in block.replace("\\\n", " ").splitlines()
            if line.strip()]


def edgeroute_commands(markdown: str) -> list[list[str]]:
    """The argv (after ``edgeroute``) of every edgeroute command in the fenced blocks."""
    commands = []
    for block in FENCE.findall(markdown):
        for line in _shell_lines(block):
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            segment: list[str] = []
            redirected = False
            for token in [*lexer, ";"]:
                if token in CONTROL:
                    words = [w for w in segment if not ASSIGNMENT.match(w)]
                    if words and Path(words[0]).name == "edgeroute":
                        commands.append(words[1:])
                    segment = []
                elif token in REDIRECT:
                    redirected = True
                elif redirected:
                    redirected = False  # the redirection's target
                else:
                    segment.append(token)
    return commands


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _names_exist(words: list[str]) -> bool:
    """``edgeroute chaos kill|hang`` style: each word a subcommand of the one before it."""
    parser = build_parser()
    for word in words:
        choices = _subcommands(parser)
        if not choices or word.startswith("-") or not re.fullmatch(r"[a-z|-]+", word):
            return True
        if not all(alternative in choices for alternative in word.split("|")):
            return False
        parser = choices[word.split("|")[0]]
    return True


def test_docs_exist() -> None:
    names = {path.name for path in DOCS}
    assert {"operations.md", "cluster.md", "policies.md"} <= names


def test_policy_reference_is_the_generated_one() -> None:
    assert (ROOT / "docs/policies.md").read_text() == policy_reference(), (
        "docs/policies.md is stale: run `edgeroute infra generate` from the repository root"
    )


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_command_in_code_blocks_parses(path: Path) -> None:
    parser = build_parser()
    for argv in edgeroute_commands(path.read_text()):
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path.name}: `edgeroute {' '.join(argv)}` is not a valid command")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_inline_command_exists(path: Path) -> None:
    for text in INLINE.findall(path.read_text()):
        words = text.split()[1:]
        assert _names_exist(words), f"{path.name}: `{text}` names a command that does not exist"


def test_the_docs_show_the_commands_ops_use() -> None:
    shown = {tuple(argv[:2]) for path in DOCS for argv in edgeroute_commands(path.read_text())}
    for command in [("targets",), ("policy", "validate"), ("policy", "apply"),
                    ("policy", "explain"), ("chaos", "kill"), ("edge",),
                    ("infra", "serve-config")]:
        assert any(s[: len(command)] == command for s in shown), command


def test_command_extraction_handles_shell_syntax() -> None:
    markdown = (
        "```bash\n"
        "$ RAY_AUTH_MODE=token .venv/bin/edgeroute policy apply p.yaml && echo done\n"
        "edgeroute infra policy-reference > docs/policies.md  # regenerate\n"
        "edgeroute chaos slow edge-a \\\n  --base-ms 80\n"
        "curl -s localhost:8000/v1/targets | jq .\n"
        "```\n"
    )
    assert edgeroute_commands(markdown) == [
        ["policy", "apply", "p.yaml"], ["infra", "policy-reference"],
        ["chaos", "slow", "edge-a", "--base-ms", "80"],
    ]
