"""Class names -> make / body type / model / year, and the task list of a data set with its index maps.

A data set whose every class name reads like a car name ("Aston Martin V8 Vantage Coupe 2012")
gets the coarse tasks "make", "type" and "year" beside the fine task "model"; any other data set
gets "model" only. `fine_to[task][i]` is the coarse class of fine class i, so a fine prediction
implies its make, type and year.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from carcli.errors import CarcliError

FINE = "model"
MULTI_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover")
BODY_TYPES = (
    "Sedan", "SUV", "Convertible", "Coupe", "Hatchback", "Wagon", "Minivan", "Van", "Cab", "SuperCab",
)  # fmt: skip
QUALIFIED_TYPES = ("Cab", "Van")
QUALIFIERS = ("Crew", "Extended", "Regular", "Quad", "Club", "Cargo", "Passenger", "Wagon")
OTHER = "Other"
# coarse task name -> CarName attribute, in task order
COARSE_TASKS = (("make", "make"), ("type", "body_type"), ("year", "year"))


@dataclass(frozen=True)
class CarName:
    make: str
    model: str
    body_type: str
    year: str


def _is_year(word: str) -> bool:
    return len(word) == 4 and word.isdigit() and 1900 <= int(word) <= 2099


def _split_make(words: list[str]) -> tuple[str, list[str]]:
    """The make and the words after it; a multi-word make only when a word is left for the model."""
    for make in MULTI_WORD_MAKES:
        parts = make.split()
        if words[: len(parts)] == parts and len(words) > len(parts):
            return make, words[len(parts) :]
    return words[0], words[1:]


def _split_type(words: list[str]) -> tuple[list[str], str]:
    """The model words and the body type; the type is taken only when a word is left for the model."""
    if len(words) < 2 or words[-1] not in BODY_TYPES:
        return words, OTHER
    if words[-1] in QUALIFIED_TYPES and len(words) >= 3 and words[-2] in QUALIFIERS:
        return words[:-2], " ".join(words[-2:])
    return words[:-1], words[-1]


def parse_car_name(name: str) -> CarName | None:
    """Read 'Make Model [Type] Year'; None unless the name ends in a year after at least two words."""
    words = name.split()
    if len(words) < 3 or not _is_year(words[-1]):
        return None
    make, rest = _split_make(words[:-1])
    model_words, body_type = _split_type(rest)
    return CarName(make=make, model=" ".join(model_words), body_type=body_type, year=words[-1])


def _sorted_classes(task: str, values: list[str]) -> list[str]:
    return sorted(set(values), key=int) if task == "year" else sorted(set(values))


@dataclass
class Taxonomy:
    tasks: dict[str, list[str]]
    fine_to: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tasks or next(iter(self.tasks)) != FINE:
            raise CarcliError(f"taxonomy is malformed: its first task must be {FINE!r}")
        n_fine = len(self.tasks[FINE])
        if set(self.fine_to) != set(self.tasks) - {FINE}:
            raise CarcliError("taxonomy is malformed: its index maps do not match its tasks")
        for task, index in self.fine_to.items():
            n_coarse = len(self.tasks[task])
            if len(index) != n_fine or not all(0 <= i < n_coarse for i in index):
                raise CarcliError(f"taxonomy is malformed: bad index map for task {task!r}")

    @classmethod
    def from_class_names(cls, names: list[str]) -> Taxonomy:
        """Fine task from `names`; coarse tasks only when every name parses as a car name."""
        tasks: dict[str, list[str]] = {FINE: list(names)}
        fine_to: dict[str, list[int]] = {}
        parsed = [parse_car_name(name) for name in names]
        cars = [car for car in parsed if car is not None]
        if not names or len(cars) != len(names):
            return cls(tasks=tasks, fine_to=fine_to)
        for task, attribute in COARSE_TASKS:
            values = [getattr(car, attribute) for car in cars]
            classes = _sorted_classes(task, values)
            if len(classes) < 2:
                continue
            position = {name: i for i, name in enumerate(classes)}
            tasks[task] = classes
            fine_to[task] = [position[value] for value in values]
        return cls(tasks=tasks, fine_to=fine_to)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": {task: list(names) for task, names in self.tasks.items()},
            "fine_to": {task: list(index) for task, index in self.fine_to.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Taxonomy:
        try:
            tasks = {str(task): [str(n) for n in names] for task, names in d["tasks"].items()}
            fine_to = {str(task): [int(i) for i in index] for task, index in d.get("fine_to", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CarcliError(f"taxonomy is malformed: {err}") from None
        fine = tasks.get(FINE)
        if fine is None:
            raise CarcliError(f"taxonomy is malformed: no {FINE!r} task")
        for task, index in fine_to.items():
            if task not in tasks or len(index) != len(fine) or not all(0 <= i < len(tasks[task]) for i in index):
                raise CarcliError(f"taxonomy is malformed: its {task!r} map does not fit the class lists")
        return cls(tasks=tasks, fine_to=fine_to)

    def targets(self, fine_label: int) -> dict[str, int]:
        """The class index of `fine_label` in every task, fine task first."""
        if not 0 <= fine_label < len(self.tasks[FINE]):
            raise ValueError(f"fine label {fine_label} is out of range 0..{len(self.tasks[FINE]) - 1}")
        return {FINE: fine_label, **{task: index[fine_label] for task, index in self.fine_to.items()}}

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)
