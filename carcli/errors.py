"""The errors a user can cause. The CLI turns them into one red line and an exit code.

`one_line` and `fault` turn library messages and operating-system faults into such lines.
"""

from __future__ import annotations

import re


class CarcliError(Exception):
    """Something went wrong at run time because of the user's input or environment (exit code 1)."""

    exit_code = 1


class UsageError(CarcliError):
    """A flag or argument value that cannot work (exit code 2)."""

    exit_code = 2


class Interrupted(CarcliError):
    """The user stopped a run (Ctrl-C); its resumable state was saved (exit code 130, as for SIGINT)."""

    exit_code = 130


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"
_QUALIFIED = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Warning): ")


def plain(text: str) -> str:
    """`text` without terminal colour codes (libraries such as torch colour their messages)."""
    return _ANSI.sub("", text)


def one_line(text: str) -> str:
    """A library's message as one line: colour codes gone; of a loader worker's traceback, its last line."""
    text = plain(text).strip()
    if _WORKER_TRACEBACK in text:  # torch re-raises a DataLoader worker's error with the worker's traceback
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        text = _QUALIFIED.sub("", last)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:1]) if lines else ""


def fault(exc: BaseException) -> CarcliError | None:
    """A one-line CarcliError for operating-system faults that can reach any command (memory, disk, permissions).

    Library code names the user's path where it can (files.atomic_output); this is the net under it.
    """
    if isinstance(exc, MemoryError) or "MemoryError" in str(exc).split(_WORKER_TRACEBACK)[0]:
        return CarcliError(
            "out of memory: lower --batch-size, --img-size or --workers (or close other programs) and run again"
        )
    if _WORKER_TRACEBACK in str(exc):
        return CarcliError(f"a data loader worker failed: {one_line(str(exc))}")
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        reason = exc.strerror or one_line(str(exc)) or type(exc).__name__
        return CarcliError(f"cannot use{where}: {reason.lower() if exc.errno else reason}")
    return None
