"""Every `flexidit-trt ...` command the package's messages tell a user to run must parse.

The package's source is read as Python: each string literal (f-strings with their fields as placeholders)
is searched for a command, and each command goes through the real click parser, with a value of the
option's type in place of each placeholder. A hint naming an option or command that does not exist, or a
flag given a value, fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest

import flexidit_trt
from flexidit_trt.cli import main

PACKAGE = Path(flexidit_trt.__file__).parent
PLACEHOLDER = "\x00"  # stands for an f-string field or a "..." in a hint
# A command follows a backtick or an opening parenthesis and ends at the closing one (or the literal's end).
HINT = re.compile(r"(?:`|\()flexidit-trt\s+([^`)\n]*)")


def _literal_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            is_text = isinstance(value, ast.Constant) and isinstance(value.value, str)
            parts.append(value.value if is_text else PLACEHOLDER)
        return "".join(parts)
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of docstring nodes: they describe commands rather than tell a user to run one."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
    }


def package_hints() -> list[tuple[str, str]]:
    """(where, command words after `flexidit-trt`) for every command in a message of the package: in
    backticks or after an opening parenthesis, or a whole keyword argument (`rebuild="flexidit-trt ..."`)."""
    hints = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):  # its constant parts are read with the whole f-string
                skip.update(id(value) for value in node.values)
            if isinstance(node, ast.keyword):
                text = _literal_text(node.value)
                if text and text.startswith("flexidit-trt "):
                    skip.add(id(node.value))
                    hints.append(
                        (f"{path.relative_to(PACKAGE.parent)}:{node.value.lineno}", _words(text[13:]))
                    )
            if id(node) in skip or (text := _literal_text(node)) is None:
                continue
            for match in HINT.finditer(text):
                hints.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", _words(match.group(1))))
    return hints


def _words(command: str) -> str:
    return command.replace("...", PLACEHOLDER).strip().rstrip(".,;:")


def _value_for(param: click.Parameter | None, tmp_path: Path) -> str:
    """A value the option accepts, standing in for a placeholder."""
    kind = getattr(param, "type", None)
    if isinstance(kind, click.Path):
        if kind.exists:
            existing = tmp_path / "existing.file"
            existing.write_bytes(b"")
            return str(tmp_path if not kind.file_okay else existing)
        return str(tmp_path / "new")
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):
        return "1"
    return "1"  # free text: a model name or a size list ("1" is also a valid size list)


def parse_hint(words: str, tmp_path: Path) -> click.Context:
    """Parse `flexidit-trt <words>` as the CLI would, placeholders filled; raises click errors."""
    tokens = words.split()
    command: click.Command = main
    name = "flexidit-trt"
    while isinstance(command, click.Group) and tokens and not tokens[0].startswith("-"):
        sub = command.get_command(click.Context(command), tokens[0])
        if sub is None:
            raise click.UsageError(f"no command {tokens[0]!r} under {name!r}")
        name, command, tokens = tokens[0], sub, tokens[1:]
    options = {opt: p for p in command.params for opt in getattr(p, "opts", [])}
    filled = []
    for i, token in enumerate(tokens):
        if PLACEHOLDER in token:
            before = tokens[i - 1] if i else ""
            token = token.replace(PLACEHOLDER, _value_for(options.get(before), tmp_path))
        filled.append(token)
    return command.make_context(name, filled)


HINTS = package_hints()


def test_the_scan_finds_the_hints() -> None:
    """The scan itself: it must see the commands the runtime and the build tell users to run."""
    words = [w for _, w in HINTS]
    assert len(HINTS) >= 8, HINTS
    assert any(w.startswith("build") for w in words) and any(w.startswith("train-classifier") for w in words)


@pytest.mark.parametrize(
    ("where", "words"), HINTS, ids=[f"{w}: {h.replace(PLACEHOLDER, '{}')}" for w, h in HINTS]
)
def test_every_hint_in_a_message_parses(where: str, words: str, tmp_path: Path) -> None:
    try:
        parse_hint(words, tmp_path)
    except click.ClickException as err:
        pytest.fail(f"{where}: `flexidit-trt {words}` does not parse: {err.format_message()}")


@pytest.mark.parametrize(
    "words", ["build --engine aoti", "run --budgett 0.5", "nosuchcommand", "build --aoti yes"]
)
def test_a_wrong_hint_fails_to_parse(words: str, tmp_path: Path) -> None:
    """The check can fail: an unknown option, command, or a flag given a value is refused."""
    with pytest.raises(click.ClickException):
        parse_hint(words, tmp_path)
