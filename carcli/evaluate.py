"""`carcli eval`: a checkpoint's (or an exported `.onnx` model's) metrics and reports on labelled samples.

`evaluate` is the whole job: the split the checkpoint's training held out, probabilities from
`carcli.inference` (plain, TTA or the two-pass CAM crop), per-task metrics (carcli.metrics),
calibration error and its reliability diagram, confusion matrices, the most confused pairs, a
contact sheet of the top-loss images, `eval.json`, and the Stanford Cars devkit submission file
(carcli.data.devkit); `--calibrate` fits and stores a temperature per task. An exported `.onnx`
model is scored by the same job through ONNX Runtime: torch is imported only for a `.st` checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from carcli.calibration import (
    BINS,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    tempered,
)
from carcli.checkpoint import rewrite_metadata, trained_on
from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.images import find_unreadable
from carcli.data.layouts import Sample
from carcli.data.submission import plan_submission
from carcli.data.taxonomy import FINE
from carcli.deploy import OnnxModel, is_onnx
from carcli.errors import CarcliError, UsageError
from carcli.files import check_output_dir, check_output_file, write_csv, write_text
from carcli.inference import (
    cam_crop_probs,
    default_workers,
    load_scorer,
    sample_probs,
)
from carcli.metrics import hierarchy_consistency, most_confused, task_metrics, top1_per_task, with_implied_tasks
from carcli.plots import plot_confusion, plot_reliability, plot_top_losses
from carcli.progress import Reporter, SilentReporter
from carcli.splits import align_labels, sample_targets, split_samples
from carcli.usage import check_eval

if TYPE_CHECKING:
    from torch import Tensor

MOST_CONFUSED_SHOWN = 20
TOP_LOSSES = 24
GROUP_TASK = "make"  # the fine confusion matrix is grouped by this task's classes


@dataclass
class EvalResult:
    """What `evaluate` measured and wrote."""

    report: dict[str, Any]  # the eval.json object
    out_dir: Path
    files: list[Path]
    most_confused: list[dict[str, Any]]  # the top pairs (all of them are in most_confused.csv)
    unreadable: list[Path] = field(default_factory=list)
    submission_top1: float | None = None  # the written submission, scored by `score_submission`


def evaluate(
    checkpoint: Path,
    data: Path | None = None,
    split: str | None = None,
    out: Path | None = None,
    tta: bool = False,
    crop: str | None = None,
    submission: Path | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    reporter: Reporter | None = None,
    calibrate: bool = False,
    calibrated_out: Path | None = None,
    img_size: int | None = None,
    hierarchy: bool = False,
    eval_aspect: float | None = None,
) -> EvalResult:
    """The `carcli eval` job: metrics and reports of `checkpoint` (.st or .onnx) on a split of `data`, in `out`.

    `data` defaults to the data set the checkpoint was trained on; `split` to its val split (else
    test); `out` to `eval-<split>` beside the checkpoint; `img_size` and `eval_aspect` (the view) to those
    stored in the checkpoint.
    `calibrate` fits a temperature per task on the val split and stores it in the checkpoint (or in a copy
    at `calibrated_out`). `hierarchy` scores hierarchy-consistent answers (carcli.hierarchy); the report
    has both either way.
    """
    started = time.perf_counter()
    reporter = reporter or SilentReporter()
    check_eval(checkpoint, data, split, crop, tta, batch_size, device)
    _check_outputs(out, submission)
    _check_model_options(checkpoint, crop, tta, calibrate, calibrated_out, hierarchy or img_size is not None)
    model, meta, where = load_scorer(checkpoint, device)
    meta = meta.at_view(img_size, eval_aspect)
    data = data or trained_on(meta, checkpoint)
    dataset, samples, split = split_samples(meta, data, split)
    if calibrate and split != "val":
        raise UsageError(f"--calibrate fits on the val split; {data} has none to fit on (the {split} split is kept)")
    to_fine = np.asarray(align_labels(dataset.class_names, meta), dtype=np.int64)
    unreadable = find_unreadable([s.path for s in samples])
    if unreadable:
        reporter.warn(f"skipped {len(unreadable)} unreadable images (listed in unreadable.txt)")
        bad = set(unreadable)
        samples = [s for s in samples if s.path not in bad]
    if not samples:
        raise CarcliError(f"no readable images in the {split} split of {data}")
    plan = plan_submission(submission, dataset, split, samples, meta.fine_names) if submission is not None else None
    out_dir = out or checkpoint.parent / f"eval-{split}"
    reporter.info(f"evaluating {checkpoint} on {len(samples)} {split} images of {data} ({where})")
    plain, raw = _run(model, meta, samples, tta, crop, batch_size, workers, where, reporter)
    calibration = None
    if calibrate:
        raw, calibration = _calibrate(checkpoint, meta, raw, sample_targets(samples, to_fine, meta, list(raw)))
        calibration["checkpoint"] = str(rewrite_calibration(checkpoint, meta, calibration, calibrated_out))
    probs, hierarchy_entry = _hierarchy(raw, sample_targets(samples, to_fine, meta, [FINE])[FINE], meta, hierarchy)
    result = _score(meta, samples, to_fine, probs, plain, out_dir)
    if unreadable:
        result.files.append(out_dir / "unreadable.txt")
        write_text(result.files[-1], "".join(f"{p}\n" for p in unreadable))
        result.unreadable = unreadable
    if plan is not None:
        fine_pred = np.asarray(probs[FINE]).argmax(1).tolist()
        result.submission_top1 = plan.write(dataset, [s.path for s in samples], fine_pred, meta.fine_names)
        result.files.append(plan.path)
    result.report = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "n_images": len(samples),
        "img_size": meta.img_size,
        "eval_aspect": meta.view_aspect,
        "tasks": result.report["tasks"],
        "temperatures": calibration["temperatures"] if calibration else meta.temperatures,
        **({"calibration": calibration} if calibration else {}),
        **hierarchy_entry,
        "seconds": round(time.perf_counter() - started, 3),
    }
    result.files.insert(0, out_dir / "eval.json")
    write_text(result.files[0], json.dumps(result.report, indent=2) + "\n")
    return result


def _check_outputs(out: Path | None, submission: Path | None) -> None:
    """Refuse unusable output paths before the model is loaded or any image decoded."""
    if out is not None:
        check_output_dir(out)
    if submission is not None:
        check_output_file(submission, "--submission")


def _check_model_options(
    checkpoint: Path, crop: str | None, tta: bool, calibrate: bool, calibrated_out: Path | None, st_only: bool
) -> None:
    if is_onnx(checkpoint) and (crop or tta or calibrate or st_only):
        raise UsageError(
            "--tta, --crop, --calibrate, --hierarchy and --img-size need the .st checkpoint; "
            "an .onnx model scores plain views at its own size"
        )
    if calibrate and (crop or tta):
        raise UsageError("--calibrate fits the plain view the deployed model sees; drop --tta / --crop")
    if calibrated_out is not None and not calibrate:
        raise UsageError("-o names the calibrated checkpoint to write: give --calibrate too")
    if calibrated_out is not None and calibrated_out.suffix != ".st":
        raise UsageError("-o: the calibrated checkpoint is a .st file")


def _hierarchy(
    raw: dict[str, Any], fine_targets: np.ndarray, meta: CheckpointMeta, used: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The probabilities to score (hierarchy-consistent when `used`) and eval.json's "hierarchy" entry.

    An .onnx model carries no fitted weights (and is refused with `used`): its probabilities pass as they are.
    """
    if not used and meta.hierarchy is None:
        return raw, {}
    import torch

    from carcli.hierarchy import consistent_probs, hierarchy_report

    tensors = {task: torch.as_tensor(np.asarray(p)) for task, p in raw.items()}
    probs = consistent_probs(tensors, meta) if used else raw
    return probs, hierarchy_report(tensors, torch.as_tensor(fine_targets), meta, used)


def _run(
    model: Any,
    meta: CheckpointMeta,
    samples: Sequence[Sample],
    tta: bool,
    crop: str | None,
    batch_size: int,
    workers: int | None,
    device: str,
    reporter: Reporter,
) -> tuple[dict[str, Tensor] | None, dict[str, Any]]:
    """Probabilities per task: (first pass, two-pass) with `crop`, else (None, plain or TTA)."""
    crop_margin = float(meta.train_option("bbox_margin", 0.1)) if meta.train_option("crop_to_bbox") else None
    progress = reporter.stage("evaluating" + (" (TTA)" if tta else ""), len(samples))
    if isinstance(model, OnnxModel):
        return None, model.sample_probs(samples, batch_size, progress, crop_margin)
    workers = default_workers(len(samples), batch_size) if workers is None else workers
    run = {"batch_size": batch_size, "device": device, "workers": workers, "crop_margin": crop_margin}
    if crop == "cam":
        return cam_crop_probs(model, meta, samples, reporter=reporter, **run)
    return None, sample_probs(model, meta, samples, progress=progress, tta=tta, **run)


def _calibrate(
    checkpoint: Path, meta: CheckpointMeta, probs: dict[str, Any], targets: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit a temperature per task on `probs` (already at the checkpoint's temperatures, which it multiplies);
    the probabilities at the new temperatures and the calibration record (ECE before and after)."""
    fitted = {task: fit_temperature(p, targets[task]) for task, p in probs.items()}
    calibrated = {task: tempered(p, fitted[task]) for task, p in probs.items()}
    before, after = with_implied_tasks(probs, meta)[0], with_implied_tasks(calibrated, meta)[0]
    full = sample_targets_like(targets, meta, list(before))
    old = meta.temperatures
    record = {
        "temperatures": {task: round(old.get(task, 1.0) * t, 6) for task, t in fitted.items()},
        "fitted_on": {"split": "val", "images": len(next(iter(targets.values())))},
        "bins": BINS,
        "ece_before": {task: expected_calibration_error(p, full[task]) for task, p in before.items()},
        "ece_after": {task: expected_calibration_error(p, full[task]) for task, p in after.items()},
    }
    return calibrated, record


def sample_targets_like(targets: dict[str, np.ndarray], meta: CheckpointMeta, tasks: Sequence[str]) -> dict[str, Any]:
    """Targets of `tasks` from those already known: coarse ones are mapped up from the fine targets."""
    fine_to = meta.taxonomy.fine_to
    return {t: targets[t] if t in targets else np.asarray(fine_to[t])[targets[FINE]] for t in tasks}


def rewrite_calibration(checkpoint: Path, meta: CheckpointMeta, record: dict[str, Any], out: Path | None) -> Path:
    """Store `record` as the checkpoint's `calibration` metadata, in place or in a copy at `out` (atomically)."""
    stored = {k: v for k, v in record.items() if k != "checkpoint"}
    return rewrite_metadata(checkpoint, meta.replace(calibration=stored), out)


def _score(
    meta: CheckpointMeta,
    samples: Sequence[Sample],
    to_fine: np.ndarray,
    probs: dict[str, Any],
    plain: dict[str, Any] | None,
    out_dir: Path,
) -> EvalResult:
    """Metrics and report files of the probabilities of the model's tasks (report holds just `tasks` so far)."""
    probs, sources = with_implied_tasks(probs, meta)
    targets = sample_targets(samples, to_fine, meta, list(probs))
    tasks, files, pairs = _write_reports(meta, samples, probs, targets, sources, out_dir)
    if plain is not None:
        plain_top1 = top1_per_task(with_implied_tasks(plain, meta)[0], targets, list(tasks))
        for task, metrics in tasks.items():
            metrics["plain_top1"] = plain_top1[task]
    return EvalResult({"tasks": tasks}, out_dir, files, pairs[:MOST_CONFUSED_SHOWN])


def _write_reports(
    meta: CheckpointMeta,
    samples: Sequence[Sample],
    probs: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    sources: dict[str, str],
    out_dir: Path,
) -> tuple[dict[str, dict[str, Any]], list[Path], list[dict[str, Any]]]:
    """Metrics of every task; confusion.png/.csv, most_confused.csv, per_class.csv, top_losses.png, reliability.png."""
    tasks: dict[str, dict[str, Any]] = {}
    matrices: dict[str, np.ndarray] = {}
    for task, p in probs.items():
        metrics, matrices[task] = task_metrics(p, targets[task], meta.tasks[task])
        tasks[task] = {"source": sources[task], **metrics, "ece": expected_calibration_error(p, targets[task])}
    for task, extra in hierarchy_consistency(probs, targets, meta, sources).items():
        tasks[task].update(extra)
    names = meta.fine_names
    fine_to = meta.taxonomy.fine_to
    group_names = meta.tasks.get(GROUP_TASK)
    group_of = [group_names[i] for i in fine_to[GROUP_TASK]] if group_names and GROUP_TASK in fine_to else None
    files = [out_dir / name for name in ("confusion.png", "confusion.csv", "most_confused.csv", "per_class.csv")]
    plot_confusion(matrices[FINE], names, files[0], group_of, matrices.get(GROUP_TASK), group_names)
    rows = [[name, *row] for name, row in zip(names, matrices[FINE].tolist(), strict=True)]
    write_csv(files[1], ["true \\ predicted", *names], rows)
    pairs = most_confused(matrices[FINE], names, group_of)
    write_csv(files[2], ["true", "predicted", "count", "share", "same_make"], [list(p.values()) for p in pairs])
    per_class = [
        [task, name, c["support"], c["accuracy"], c["precision"], c["f1"]]
        for task, metrics in tasks.items()
        for name, c in metrics["per_class"].items()
    ]
    write_csv(files[3], ["task", "class", "support", "accuracy", "precision", "f1"], per_class)
    files += [out_dir / "top_losses.png", out_dir / "reliability.png"]
    _top_losses(samples, probs[FINE], targets[FINE], names, files[-2])
    bins = {task: reliability_bins(p, targets[task]) for task, p in probs.items()}
    plot_reliability(bins, {task: m["ece"] for task, m in tasks.items()}, files[-1])
    return tasks, files, pairs


def _top_losses(
    samples: Sequence[Sample], probs: np.ndarray, targets: np.ndarray, names: Sequence[str], path: Path
) -> None:
    losses = -np.log(np.maximum(probs[np.arange(len(targets)), targets].astype(np.float64), 1e-12))
    worst = np.argsort(-losses, kind="stable")[:TOP_LOSSES].tolist()
    predicted = probs.argmax(1)
    plot_top_losses(
        [samples[i].path for i in worst],
        [names[int(targets[i])] for i in worst],
        [names[int(predicted[i])] for i in worst],
        [float(probs[i, predicted[i]]) for i in worst],
        [float(losses[i]) for i in worst],
        path,
    )
