"""A Stanford Cars devkit submission for a data set: which annotations it covers, checked and written.

`plan_submission` checks, before any prediction, that a split covers every annotation of its devkit
file; `SubmissionPlan.write` writes the file (format and scoring: `carcli.data.devkit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from carcli.data.devkit import (
    DEVKIT_TEST_ANNOS,
    DEVKIT_TEST_CSV,
    DEVKIT_TEST_DIR,
    DEVKIT_TRAIN_ANNOS,
    DEVKIT_TRAIN_DIR,
    devkit_file,
    labelled_annotations,
    score_submission,
)
from carcli.data.layouts import DataSet, Sample, locate
from carcli.errors import CarcliError, UsageError
from carcli.files import write_text


def split_annotations(dataset: DataSet, split: str) -> tuple[Path, list[Path], list[int]]:
    """The devkit annotation file behind `split`, the image path of each annotation and its 1-based class."""
    if dataset.layout != "devkit":
        raise UsageError(f"--submission needs a Stanford Cars devkit; {dataset.root} is a {dataset.layout} data set")
    base = locate(dataset.root)[1]
    if split == "test":
        names, folder = (DEVKIT_TEST_ANNOS, DEVKIT_TEST_CSV), base / DEVKIT_TEST_DIR
    else:
        names, folder = (DEVKIT_TRAIN_ANNOS,), base / DEVKIT_TRAIN_DIR
    source = next((p for p in (devkit_file(base, n) for n in names) if p), None)
    if source is None:
        raise CarcliError(f"{base} has no labelled annotation file for the {split} split")
    annotations = labelled_annotations(source)
    return source, [folder / a.fname for a in annotations], [a.label for a in annotations]


@dataclass
class SubmissionPlan:
    """Where a submission goes and what it scores against: the image of each annotation and its true class."""

    path: Path
    annotated: list[Path]
    truth: list[int]

    def write(self, dataset: DataSet, paths: Sequence[Path], fine_pred: Sequence[int], names: Sequence[str]) -> float:
        """Line M = the predicted 1-based devkit class of annotation M (`names`: the model's fine classes);
        returns the file's score."""
        by_path = dict(zip(paths, fine_pred, strict=True))
        devkit_class = {name: i + 1 for i, name in enumerate(dataset.class_names)}
        write_text(self.path, "".join(f"{devkit_class[names[by_path[p]]]}\n" for p in self.annotated))
        return score_submission(self.path, self.truth)


def plan_submission(
    path: Path, dataset: DataSet, split: str, samples: Sequence[Sample], names: Sequence[str]
) -> SubmissionPlan:
    """Check, before any prediction, that `samples` cover every annotation of the split's devkit file
    and that every fine class the checkpoint can predict (`names`) has a devkit class number."""
    source, annotated, truth = split_annotations(dataset, split)
    foreign = set(names) - set(dataset.class_names)
    if foreign:
        raise CarcliError(f"--submission: the checkpoint predicts {len(foreign)} classes the devkit does not number")
    have = {s.path for s in samples}
    missing = [p for p in annotated if p not in have]
    if missing:
        raise CarcliError(
            f"--submission needs a prediction for each of the {len(annotated)} annotations in {source.name}, "
            f"but {len(missing)} have no readable image in the {split} split (first: {missing[0].name}); "
            "use --split test on a devkit with cars_test/ and its labels"
        )
    return SubmissionPlan(path, annotated, truth)
