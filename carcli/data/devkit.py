"""The Stanford Cars devkit's annotation files read for scoring, and its submission format.

A submission is a text file with the predicted 1-based devkit class of annotation M on line M;
`score_submission` scores one as the devkit's eval_train.m does. `plan_submission` checks, before
any prediction, that a split covers every annotation of its devkit file; `SubmissionPlan.write` writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.layouts import (
    DEVKIT_TEST_ANNOS,
    DEVKIT_TEST_CSV,
    DEVKIT_TEST_DIR,
    DEVKIT_TRAIN_ANNOS,
    DEVKIT_TRAIN_DIR,
    Annotation,
    DataSet,
    Sample,
    csv_annotations,
    devkit_file,
    locate,
    mat_annotations,
)
from carcli.errors import CarcliError, UsageError
from carcli.files import write_text


def _annotations(path: Path) -> list[Annotation]:
    annotations = csv_annotations(path) if path.suffix.lower() == ".csv" else mat_annotations(path)
    if annotations is None:
        raise CarcliError(f"{path} has no classes (the unlabelled test annotations?)")
    return annotations


def annotation_classes(path: Path) -> list[int]:
    """The 1-based class of every annotation of a devkit file: a cars_*_annos*.mat or test_labels.csv."""
    if not path.is_file():
        raise CarcliError(f"annotation file not found: {path}")
    return [a.label for a in _annotations(path)]


def score_submission(path: Path, classes: Sequence[int]) -> float:
    """Top-1 of a submission file (class of annotation M on line M) against `classes`, as the devkit's eval_train.m."""
    try:
        predicted = [int(line) for line in path.read_text().split()]
    except (OSError, ValueError) as exc:
        raise CarcliError(f"{path} is not a submission file (one integer class a line): {exc}") from None
    if len(predicted) != len(classes):
        raise CarcliError(f"{path} has {len(predicted)} predictions but there are {len(classes)} annotations")
    valid = set(classes)
    bad = next((i for i, c in enumerate(predicted) if c not in valid), None)
    if bad is not None:
        raise CarcliError(f"{path}: line {bad + 1} predicts class {predicted[bad]}, which is not a valid class")
    return float(np.mean(np.array(predicted) == np.array(classes))) if classes else 0.0


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
    annotations = _annotations(source)
    return source, [folder / a.fname for a in annotations], [a.label for a in annotations]


@dataclass
class SubmissionPlan:
    """Where a submission goes and what it scores against: the image of each annotation and its true class."""

    path: Path
    annotated: list[Path]
    truth: list[int]

    def write(self, dataset: DataSet, paths: Sequence[Path], fine_pred: Sequence[int], meta: CheckpointMeta) -> float:
        """Line M = the predicted 1-based devkit class of annotation M; returns the file's score."""
        by_path = dict(zip(paths, fine_pred, strict=True))
        devkit_class = {name: i + 1 for i, name in enumerate(dataset.class_names)}
        names = meta.fine_names
        write_text(self.path, "".join(f"{devkit_class[names[by_path[p]]]}\n" for p in self.annotated))
        return score_submission(self.path, self.truth)


def plan_submission(
    path: Path, dataset: DataSet, split: str, samples: Sequence[Sample], meta: CheckpointMeta
) -> SubmissionPlan:
    """Check, before any prediction, that `samples` cover every annotation of the split's devkit file
    and that every class the checkpoint can predict has a devkit class number."""
    source, annotated, truth = split_annotations(dataset, split)
    foreign = set(meta.fine_names) - set(dataset.class_names)
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
