"""Prediction for image files: gather the inputs (files, folders, globs), batch them through a checkpoint,
and read off the top-k fine classes, the make, body type and year, and the modernity score.

Modernity is the expected production year under the predicted year distribution, scaled over the
years the checkpoint knows (its year classes, i.e. the years of its training set) to [0, 1]: 0 = the
oldest year, 1 = the newest. A checkpoint without a year head uses its fine distribution summed by
year; one whose classes have no years gives null.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from carcli.data.images import find_unreadable
from carcli.data.layouts import Sample
from carcli.data.taxonomy import FINE
from carcli.errors import CarcliError, UsageError
from carcli.evaluate import (
    SilentStages,
    StageReporter,
    check_crop,
    default_workers,
    sample_probs,
    with_implied_tasks,
    write_csv,
)
from carcli.paths import RUNS_DIR

COARSE = ("make", "type", "year")
GLOB_CHARS = "*?["


@dataclass
class ImagePrediction:
    """One image's answer; `to_json` gives the JSON Lines object of `carcli predict --json`."""

    image: str
    top_k: list[dict[str, Any]]  # [{"label", "score"}], best first
    coarse: dict[str, dict[str, Any] | None]  # make/type/year -> {"label", "score"(, "expected")} or None
    modernity: float | None

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "top_k": self.top_k, **self.coarse, "modernity": self.modernity}


@dataclass
class PredictResult:
    """What `predict` did: the checkpoint it used, an answer per readable image, the inputs it skipped."""

    checkpoint: Path
    predictions: list[ImagePrediction]
    skipped: list[tuple[str, str]]  # (input, why)
    files: list[Path] = field(default_factory=list)  # the CSV and explanation images written
    seconds: float = 0.0


def newest_checkpoint(runs_dir: Path = RUNS_DIR) -> Path:
    """The most recently written best.st under `runs_dir`."""
    found = list(runs_dir.glob("**/best.st")) if runs_dir.is_dir() else []
    if not found:
        raise CarcliError(
            f"no --model given and no best.st under {runs_dir}/; train one with `carcli train` or pass --model FILE"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def gather_images(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (searched recursively) and globs -> the decodable image files, and (input, why) for the rest."""
    candidates: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for text in inputs:
        path = Path(text).expanduser()
        if any(c in text for c in GLOB_CHARS) and not path.exists():
            found = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
            candidates += found or []
            if not found:
                skipped.append((text, "no file matches this pattern"))
        elif path.is_dir():
            candidates += sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
        elif path.is_file():
            candidates.append(path)
        else:
            skipped.append((text, "not found"))
    candidates = list(dict.fromkeys(candidates))
    bad = set(find_unreadable(candidates))
    skipped += [(str(p), _why_unreadable(p)) for p in candidates if p in bad]
    return [p for p in candidates if p not in bad], skipped


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _why_unreadable(path: Path) -> str:
    try:
        with Image.open(path):
            pass
    except UnidentifiedImageError:
        return "not an image"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return "corrupt or truncated image"


def modernity(year_probs: Tensor, years: Sequence[str]) -> Tensor:
    """(expected year - first year) / (last year - first year) for each row of a year distribution."""
    values = torch.tensor([float(y) for y in years])
    span = float(values.max() - values.min())
    expected = year_probs @ values
    return (expected - values.min()) / span if span else torch.zeros(len(year_probs))


def image_predictions(
    paths: Sequence[Path], probs: dict[str, Tensor], meta: dict[str, Any], top_k: int
) -> list[ImagePrediction]:
    """Per-image answers from the probabilities of every task (coarse tasks filled from the fine one if needed)."""
    probs, _ = with_implied_tasks(probs, meta)
    names = meta["tasks"]
    fine = probs[FINE].topk(min(top_k, probs[FINE].shape[1]), dim=1)
    years = modernity(probs["year"], names["year"]) if "year" in probs else None
    expected = probs["year"] @ torch.tensor([float(y) for y in names["year"]]) if "year" in probs else None
    answers = []
    for row, path in enumerate(paths):
        coarse: dict[str, dict[str, Any] | None] = dict.fromkeys(COARSE)
        for task in COARSE:
            if task in probs:
                score, index = probs[task][row].max(0)
                coarse[task] = {"label": names[task][int(index)], "score": round(float(score), 6)}
        if expected is not None and coarse["year"] is not None:
            coarse["year"]["expected"] = round(float(expected[row]), 2)
        top = [
            {"label": names[FINE][int(i)], "score": round(float(s), 6)}
            for s, i in zip(fine.values[row], fine.indices[row], strict=True)
        ]
        score = None if years is None else round(float(years[row]), 4)
        answers.append(ImagePrediction(str(path), top, coarse, score))
    return answers


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
    reporter: StageReporter | None = None,
    img_size: int | None = None,
    hierarchy: bool = False,
) -> PredictResult:
    """The `carcli predict` job: an answer for every readable image among `inputs`; the CSV and overlays asked for."""
    started = time.perf_counter()
    reporter = reporter or SilentStages()
    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if saliency and explain_dir is None:
        raise UsageError("--saliency writes its maps beside the Grad-CAM ones: give --explain DIR too")
    check_crop(crop)
    from carcli.checkpoint import at_size, load_model
    from carcli.device import resolve_device

    if model_path is None:
        model_path = newest_checkpoint()
        reporter.info(f"using the newest checkpoint: {model_path}")
    torch_device = str(resolve_device(device))
    model, meta = load_model(model_path, torch_device)
    meta = at_size(meta, img_size)  # None: the checkpoint's evaluation size
    paths, skipped = gather_images(inputs)
    for name, why in skipped:
        reporter.warn(f"skipped {name}: {why}")
    if not paths:
        raise CarcliError(f"no readable images among the {len(inputs)} inputs given")
    samples = [Sample(path, 0, "test") for path in paths]
    workers = default_workers(len(samples), batch_size) if workers is None else workers
    run = {"batch_size": batch_size, "device": torch_device, "workers": workers}
    if crop == "cam":
        from carcli.explain import cam_crop_probs

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


def _explain(
    model: torch.nn.Module,
    meta: dict[str, Any],
    predictions: Sequence[ImagePrediction],
    fine: Tensor,
    out_dir: Path,
    saliency: bool,
    device: str,
    reporter: StageReporter,
) -> list[Path]:
    from carcli.explain import Explanation, write_explanations

    items = [
        Explanation(Path(p.image), int(fine[i].argmax()), f"{p.top_k[0]['label']} ({100 * p.top_k[0]['score']:.1f}%)")
        for i, p in enumerate(predictions)
    ]
    progress = reporter.stage("explaining", len(items))
    return write_explanations(model, meta, items, out_dir, saliency, device=device, progress=progress)
