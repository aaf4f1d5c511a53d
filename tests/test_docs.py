"""The documentation cannot drift: README.md and docs/*.md commands parse, and the runnable ones run.

Every `carcli ...` line in a fenced code block must name a known command with known options and
values of the right type (parsed by the real click parser, not run); an example of a refusal (a
command followed by an `error:` line) is left out. A block right after the marker line
`<!-- runnable -->` is run, command after command, in a temp folder with CARCLI_HOME there too:
on the demo set, with tiny settings appended to `carcli train` (later flags win).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from carcli.cli import app

try:  # typer >= 0.20 ships its own copy of click
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^(```|~~~)")
SYNOPSIS_OPTIONAL = re.compile(r"\s*\[[^\]]*\](\.\.\.)?")
TINY_TRAIN = ["--epochs", "1", "--img-size", "32", "--batch-size", "32", "--workers", "0"]


@dataclass
class Command:
    page: str
    line: int
    args: list[str]  # after `carcli`
    runnable: bool
    text: str  # the line as written (for the shell)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: carcli {shlex.join(self.args)}"


def _without_substitutions(text: str) -> str:
    """`$(...)` (nested parentheses allowed) replaced by a placeholder value."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith("$(", i):
            depth += 1
            i += 2
            if depth == 1:
                out.append("VALUE")
            continue
        if depth and text[i] == "(":
            depth += 1
        elif depth and text[i] == ")":
            depth -= 1
        elif not depth:
            out.append(text[i])
        i += 1
    return "".join(out)


def _command_lines(lines: list[str]) -> list[tuple[int, str]]:
    """(line number in the block, text) of a block's `carcli` lines, continuations joined, `[optional]` parts
    of synopsis lines dropped; a command followed by an `error:` line is an example of a refusal, left out."""
    found: list[tuple[int, str]] = []
    start, parts = 0, []
    for number, raw in enumerate(lines):
        text = raw.strip().removeprefix("$ ")
        if not parts:
            start = number
        if text.endswith("\\"):
            parts.append(text[:-1])
            continue
        joined, parts = " ".join([*parts, text]).strip(), []
        shows_an_error = number + 1 < len(lines) and lines[number + 1].strip().startswith("error:")
        if (joined == "carcli" or joined.startswith("carcli ")) and not shows_an_error:
            found.append((start, SYNOPSIS_OPTIONAL.sub("", joined)))
    return found


def doc_commands() -> list[Command]:
    commands: list[Command] = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        inside, block_start, runnable, block = False, 0, False, []
        for number, line in enumerate(lines, start=1):
            if FENCE.match(line.strip()):
                if inside:
                    for offset, text in _command_lines(block):
                        words = shlex.split(_without_substitutions(text.split(" > ")[0]), comments=True)
                        commands.append(Command(page.name, block_start + 1 + offset, words[1:], runnable, text))
                    inside, block = False, []
                else:
                    previous = [text.strip() for text in lines[: number - 1] if text.strip()]
                    inside, block_start, block = True, number, []
                    runnable = bool(previous) and previous[-1] == MARKER
            elif inside:
                block.append(line)
    return commands


COMMANDS = doc_commands()


def _parse(args: list[str]) -> None:
    """Parse `carcli ARGS` as the CLI would, without running it; click errors propagate."""
    group = typer.main.get_command(app)
    parent = click.Context(group, info_name="carcli")
    if not args or args[0].startswith("-"):
        return
    command = group.get_command(parent, args[0])  # type: ignore[attr-defined]
    if command is None:
        raise click.UsageError(f"no such command {args[0]!r}")
    command.make_context(args[0], list(args[1:]), parent=parent)


def test_the_pages_have_commands_and_runnable_blocks():
    assert len(COMMANDS) > 30
    assert any(c.runnable for c in COMMANDS if c.page == "README.md")


@pytest.mark.parametrize("command", [c for c in COMMANDS if not {"--help", "-h", "--version"} & set(c.args)], ids=str)
def test_every_documented_command_parses(command):
    try:
        _parse(command.args)
    except click.ClickException as exc:
        pytest.fail(f"{command}: {exc.format_message()}")


@pytest.mark.slow
def test_the_runnable_commands_run(tmp_path):
    """Each runnable command in bash (globs, ~ and quotes as a user's shell has them), HOME in a temp folder."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env.update(HOME=str(tmp_path), CARCLI_HOME=str(tmp_path / ".cache" / "carcli"), COLUMNS="100")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for command in [c for c in COMMANDS if c.runnable]:
        line = command.text + (" " + shlex.join(TINY_TRAIN) if command.args[:1] == ["train"] else "")
        run = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
