"""How long fetch work reports its progress: the `Reporter` protocol and a reporter that drops everything."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Where long work reports. `update` gives the absolute progress of a named task (unit "B" = bytes)."""

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def update(self, task: str, done: int, total: int | None, unit: str) -> None: ...


class NullReporter:
    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def update(self, task: str, done: int, total: int | None, unit: str) -> None:
        pass
