"""A data set's evaluation split as a checkpoint's training read it, and the true class of its samples in every task.

The same val share and seed rebuild the very split a run held out; data-set class names are
aligned to the checkpoint's fine classes, and coarse targets (make, type, year) are mapped up
through the checkpoint's taxonomy. numpy only: the ONNX path (no torch) uses it as the checkpoint path does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.layouts import DataSet, Sample, load_dataset
from carcli.data.taxonomy import FINE
from carcli.errors import CarcliError

EVAL_SPLITS = ("val", "test")  # the held-out splits; `all` (every labelled image) is asked for by name


def split_samples(meta: CheckpointMeta, data: Path, split: str | None) -> tuple[DataSet, list[Sample], str]:
    """The data set read as the checkpoint's training run read it (same val share and seed), and a split of it."""
    dataset = load_dataset(Path(data), float(meta.train_option("val_fraction", 0.2)), int(meta.train_option("seed", 0)))
    name = split or dataset.eval_split
    if name == "all":
        return dataset, list(dataset.samples), name
    if name not in EVAL_SPLITS:
        raise CarcliError(f"{data} has no val or test images to evaluate on; --split all scores every labelled image")
    samples = dataset.split(name)
    if not samples:
        present = sorted({s.split for s in dataset.samples})
        raise CarcliError(f"{data} has no {name} images (it has {', '.join(present)}); choose --split accordingly")
    return dataset, samples, name


def align_labels(class_names: Sequence[str], meta: CheckpointMeta) -> list[int]:
    """For each data-set class, its index among the checkpoint's fine classes; unknown classes are an error."""
    known = {name: i for i, name in enumerate(meta.fine_names)}
    unknown = [name for name in class_names if name not in known]
    if unknown:
        raise CarcliError(
            f"{len(unknown)} classes of the data set are not among the checkpoint's {len(known)} classes "
            f"(first: {unknown[0]!r})"
        )
    return [known[name] for name in class_names]


def sample_targets(
    samples: Sequence[Sample], to_fine: np.ndarray, meta: CheckpointMeta, tasks: Sequence[str]
) -> dict[str, np.ndarray]:
    """The true class of every sample in each of `tasks`, from its data-set label."""
    labels = np.asarray([s.label for s in samples], dtype=np.int64)
    fine = np.asarray(to_fine, dtype=np.int64)[labels]
    fine_to = meta.taxonomy.fine_to
    targets = {FINE: fine, **{task: np.asarray(index, dtype=np.int64)[fine] for task, index in fine_to.items()}}
    return {task: targets[task] for task in tasks}
