"""How long work reports to its caller: the one `Reporter` protocol, its `Event` base and `SilentReporter`.

Library code never prints: it says lines (`info`, `warn`), runs progress bars over named pieces of
work (`stage`: images evaluated, bytes downloaded, files extracted) and hands on structured events
(`progress`: small dataclasses that subclass `Event`, defined next to their producers, such as
carcli.train.reporting's epochs and steps or carcli.tune's trials). carcli.console renders them for
every command; tests and benchmarks subclass `SilentReporter` and keep what they need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Event:
    """A structured progress event; the producers' dataclasses subclass it and renderers match on their types."""


class Reporter(Protocol):
    """Receives the progress of long work; the CLI renders it with rich, tests may ignore it."""

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def stage(self, description: str, total: int | None, unit: str = "images") -> Callable[[int], None]:
        """Start a named piece of work of `total` units (None: unknown); the callback takes the amount done so far.

        fetch-data's renderer continues the bar of a stage started again under its description (a retry)."""
        ...

    def progress(self, event: Event) -> None:
        """A structured event (an epoch's end with its record, a trial's start...); may raise to stop the work
        where its producer says so (carcli.train's `EpochEnd`)."""
        ...


class SilentReporter:
    """A Reporter that ignores everything."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def stage(self, description: str, total: int | None, unit: str = "images") -> Callable[[int], None]:
        return _ignore

    def progress(self, event: Event) -> None:
        pass


def _ignore(done: int) -> None:
    pass
