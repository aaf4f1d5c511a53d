"""`carcli predict`: gather the inputs (files, folders, globs), batch them through a checkpoint or an `.onnx`
model, and read off the top-k fine classes, the make, body type and year, and the modernity score
(the answers are `carcli.inference.image_predictions`'); the CSV table and the explanation overlays.

Modernity is the expected production year under the predicted year distribution, scaled over the
years the checkpoint knows (its year classes, i.e. the years of its training set) to [0, 1]: 0 = the
oldest year, 1 = the newest. A checkpoint without a year head uses its fine distribution summed by
year; one whose classes have no years gives null.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.finding import expand_inputs
from carcli.data.images import image_problems
from carcli.data.layouts import Sample
from carcli.data.taxonomy import FINE
from carcli.deploy import OnnxModel, is_onnx
from carcli.errors import CarcliError, UsageError
from carcli.files import check_output_dir, check_output_file, write_csv
from carcli.inference import (
    COARSE,
    ImagePrediction,
    cam_crop_probs,
    default_workers,
    image_predictions,
    load_scorer,
    sample_probs,
)
from carcli.progress import Reporter, SilentReporter
from carcli.usage import check_predict, newest_checkpoint

if TYPE_CHECKING:
    import torch


@dataclass
class PredictResult:
    """What `predict` did: the checkpoint it used, an answer per readable image, the inputs it skipped."""

    checkpoint: Path
    predictions: list[ImagePrediction]
    skipped: list[tuple[str, str]]  # (input, why)
    files: list[Path] = field(default_factory=list)  # the CSV and explanation images written
    seconds: float = 0.0


def gather_images(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (searched recursively) and globs -> the decodable image files, and (input, why) for the rest.

    Each real file is listed once, however many names or links reach it; unreadable files are skipped with
    the reason the shared image check gives (truncated, a decompression bomb, not an image...).
    """
    candidates, skipped = expand_inputs(inputs)
    bad = image_problems(candidates)
    skipped += [(str(p), why) for p, why in bad.items()]
    return [p for p in candidates if p not in bad], skipped


def write_predictions_csv(predictions: Sequence[ImagePrediction], path: Path, top_k: int) -> None:
    """The JSON Lines fields as a table: image, label_1, score_1 ... label_k, score_k, make, make_score, ..."""
    header = ["image"]
    for rank in range(1, top_k + 1):
        header += [f"label_{rank}", f"score_{rank}"]
    header += [name for task in COARSE for name in (task, f"{task}_score")] + ["expected_year", "modernity"]
    rows = []
    for p in predictions:
        ranks = [v for item in p.top_k for v in (item["label"], item["score"])]
        ranks += [""] * (2 * top_k - len(ranks))
        coarse = [
            v for task in COARSE for v in ((p.coarse[task] or {}).get("label"), (p.coarse[task] or {}).get("score"))
        ]
        rows.append([p.image, *ranks, *coarse, (p.coarse["year"] or {}).get("expected"), p.modernity])
    write_csv(path, header, rows)


def predict(
    inputs: Sequence[str],
    model_path: Path | None = None,
    top_k: int = 5,
    csv_path: Path | None = None,
    explain_dir: Path | None = None,
    saliency: bool = False,
    crop: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    reporter: Reporter | None = None,
    img_size: int | None = None,
    hierarchy: bool = False,
    eval_aspect: float | None = None,
) -> PredictResult:
    """The `carcli predict` job: an answer for every readable image among `inputs`; the CSV and overlays asked for."""
    started = time.perf_counter()
    reporter = reporter or SilentReporter()
    check_predict(model_path, top_k, batch_size, explain_dir, saliency, crop, device)
    _check_outputs(csv_path, explain_dir)
    if model_path is None:
        model_path = newest_checkpoint()
        reporter.info(f"using the newest checkpoint: {model_path}")
    if is_onnx(model_path) and (crop or explain_dir or img_size):
        raise UsageError(
            "--crop, --explain and --img-size need the .st checkpoint; an .onnx model has its own size and no gradients"
        )
    model, meta, torch_device = load_scorer(model_path, device)
    meta = meta.at_view(img_size, eval_aspect)  # None: the checkpoint's evaluation size and view
    paths, skipped = gather_images(inputs)
    for name, why in skipped:
        reporter.warn(f"skipped {name}: {why}")
    if not paths:
        raise CarcliError("no readable images among the inputs given")
    samples = [Sample(path, 0, "test") for path in paths]
    workers = default_workers(len(samples), batch_size) if workers is None else workers
    run = {"batch_size": batch_size, "device": torch_device, "workers": workers}
    if isinstance(model, OnnxModel):
        probs = model.sample_probs(samples, batch_size, reporter.stage("predicting", len(samples)))
    elif crop == "cam":
        probs = cam_crop_probs(model, meta, samples, reporter=reporter, **run)[1]
    else:
        probs = sample_probs(model, meta, samples, progress=reporter.stage("predicting", len(samples)), **run)
    if hierarchy:
        from carcli.hierarchy import consistent_probs

        probs = consistent_probs(probs, meta)
    result = PredictResult(model_path, image_predictions(paths, probs, meta, top_k), skipped)
    if csv_path is not None:
        write_predictions_csv(result.predictions, csv_path, top_k)
        result.files.append(csv_path)
    if explain_dir is not None:
        result.files += _explain(
            model, meta, result.predictions, probs[FINE], explain_dir, saliency, torch_device, reporter
        )
    result.seconds = time.perf_counter() - started
    return result


def _check_outputs(csv_path: Path | None, explain_dir: Path | None) -> None:
    """Refuse unusable output paths before the model is loaded or any image decoded."""
    if csv_path is not None:
        check_output_file(csv_path, "--csv")
    if explain_dir is not None:
        check_output_dir(explain_dir, "--explain")


def _explain(
    model: torch.nn.Module,
    meta: CheckpointMeta,
    predictions: Sequence[ImagePrediction],
    fine: torch.Tensor,
    out_dir: Path,
    saliency: bool,
    device: str,
    reporter: Reporter,
) -> list[Path]:
    from carcli.explain import Explanation, write_explanations

    items = [Explanation(Path(p.image), int(fine[i].argmax()), p.caption()) for i, p in enumerate(predictions)]
    progress = reporter.stage("explaining", len(items))
    return write_explanations(model, meta, items, out_dir, saliency, device=device, progress=progress)
