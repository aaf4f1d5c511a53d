"""The run folder and its files: made (and refused when it holds a run), `config.json` (the resolved options
and the run's facts), and per epoch `metrics.jsonl` (appended), `metrics.csv`, `curves.png`, `last.st`,
`best.st` when the fine-class top-1 improved, and TensorBoard's events (`--tensorboard`). The resumable
`state.st` is carcli.train.run_state's; `resume_config` reads a run folder back for `--resume`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carcli import __version__
from carcli.checkpoint import save_checkpoint
from carcli.checkpoint_meta import CheckpointMeta
from carcli.config import apply_options
from carcli.data.layouts import DataSet
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.distill import fingerprint
from carcli.errors import CarcliError, UsageError
from carcli.files import check_output_dir, write_csv, write_error, write_text
from carcli.paths import RUNS_DIR
from carcli.plots import plot_curves
from carcli.train.config import TrainConfig
from carcli.train.distributed import Dist, broadcast
from carcli.train.run_state import STATE_FILE, Progress, read_progress

RUN_FILES = ("best.st", "last.st", "metrics.jsonl", STATE_FILE)
RUN_FILE_COPIES = 6  # float32 copies of the weights a run folder holds: best, last, state (weights, EMA, 2 moments)
RESUME_MAY_CHANGE = {"epochs", "workers", "device", "profile", "precision", "compile", "log", "log_uri"}


@dataclass
class RunFiles:
    """The run folder as the epochs write it: the checkpoints' common metadata, the records so far and
    the TensorBoard writer (None without --tensorboard)."""

    run_dir: Path
    meta: CheckpointMeta
    records: list[dict[str, Any]]
    writer: Any = None

    def write_epoch(self, record: dict[str, Any], model: nn.Module, progress: Progress) -> None:
        """metrics.jsonl (appended), metrics.csv, curves.png, last.st and, when it improved, best.st."""
        self.records.append(record)
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        _write_csv(self.run_dir / "metrics.csv", self.records)
        plot_curves(self.records, self.run_dir / "curves.png")
        metrics = {
            "epoch": record["epoch"],
            "top1": record["val_top1"],
            "top5": record["val_top5"],
            "best_epoch": progress.best_epoch,
            "best_top1": progress.best_top1,
        }
        state = model.state_dict()
        save_checkpoint(self.run_dir / "last.st", state, self.meta.replace(metrics=metrics))
        if progress.best_epoch == record["epoch"]:
            save_checkpoint(self.run_dir / "best.st", state, self.meta.replace(metrics=metrics))
        if self.writer is not None:
            for name, value in flat_record(record).items():  # as train/loss, val/top1/model
                if name != "epoch" and value is not None:
                    self.writer.add_scalar(name.replace("_", "/", 1), value, record["epoch"])
            self.writer.flush()

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        """Close the TensorBoard writer (if any) however the epochs end."""
        try:
            yield
        finally:
            if self.writer is not None:
                self.writer.close()


def make_run_dir(config: TrainConfig, ddp: Dist, parameters: int) -> Path:
    """The run folder, made; refused when it holds a run, cannot be written or lacks room for the checkpoints."""
    if config.out:
        run_dir = Path(config.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = RUNS_DIR / f"{stamp}-{config.arch.replace(':', '-')}-{config.head}"
    run_dir = Path(broadcast(str(run_dir), ddp))  # every process uses rank 0's name
    if ddp.main:
        taken = [name for name in RUN_FILES if (run_dir / name).exists()]
        if taken:
            raise CarcliError(
                f"{run_dir} already holds a run ({', '.join(taken)}); choose another --out or continue it with --resume"
            )
        check_output_dir(run_dir, needed_bytes=parameters * 4 * RUN_FILE_COPIES)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(run_dir, exc) from None
    config.out = str(run_dir)
    return run_dir


def tensorboard_writer(run_dir: Path, config: TrainConfig, ddp: Dist) -> Any:
    """TensorBoard's SummaryWriter into run_dir/tensorboard (`--tensorboard`, rank 0); None otherwise."""
    if not (config.tensorboard and ddp.main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def metadata_base(
    config: TrainConfig, mean: tuple[float, ...], std: tuple[float, ...], sizes: tuple[int, int], taxonomy: Taxonomy,
    dataset: DataSet,
) -> CheckpointMeta:  # fmt: skip
    """The metadata every checkpoint of the run carries (the epoch's metrics join it)."""
    return CheckpointMeta(
        arch=config.arch,
        head=config.head,
        img_size=sizes[1],  # what eval, predict and export feed the model
        train_img_size=sizes[0],
        eval_aspect=config.eval_aspect,
        mean=list(mean),
        std=list(std),
        tasks=taxonomy.tasks,
        taxonomy=taxonomy,
        train=asdict(config),
        data={"root": str(dataset.root), "layout": dataset.layout, "eval_split": dataset.eval_split},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def run_info(device: torch.device, precision: str, parameters: int, dataset: DataSet, ddp: Dist) -> dict[str, Any]:
    """The facts of the run that config.json records beside the options (its "run" entry)."""
    return {
        "carcli": __version__,
        "torch": torch.__version__,
        "device": str(device),
        "precision": precision,
        "processes": ddp.world,
        "parameters": parameters,
        "data_layout": dataset.layout,
        "classes": len(dataset.class_names),
    }


def teacher_sums(config: TrainConfig, run_dir: Path, resume: bool) -> dict[str, list[str]]:
    """{"teacher_sha256": [...]} for config.json's run entry; a resumed run refuses teachers whose files changed."""
    if not config.teacher:
        return {}
    sums = [fingerprint(path) for path in config.teacher]
    started = json.loads((run_dir / "config.json").read_text()).get("run", {}) if resume else {}
    if resume and started.get("teacher_sha256") != sums:
        raise CarcliError(
            f"--resume: the teacher files ({', '.join(config.teacher)}) are not the ones this run started with; "
            "restore them or start a new run"
        )
    return {"teacher_sha256": sums}


def write_json(path: Path, obj: dict[str, Any]) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def epoch_record(epoch: int, train_stats: dict[str, Any], val_stats: dict[str, Any], seconds: float) -> dict:
    """One line of metrics.jsonl."""
    return {
        "epoch": epoch,
        "lr": train_stats["lr"],
        "train_loss": train_stats["loss"],
        "train_top1": train_stats["top1"],
        "val_loss": val_stats["loss"],
        "val_top1": val_stats["top1"],
        "val_top5": val_stats["top5"],
        "images_per_s": train_stats["images_per_s"],
        "seconds": seconds,
        **({"profile": train_stats["profile"]} if train_stats["profile"] else {}),
    }


def update_best(progress: Progress, record: dict[str, Any]) -> None:
    """Count the epoch of `record` as the best one (a better fine top-1, or no validation) or as a stale one."""
    if not record["val_top1"]:  # no validation: the latest epoch is the best one
        progress.best_top1, progress.best_epoch, progress.stale_epochs = {}, record["epoch"], 0
    elif not progress.best_top1 or record["val_top1"][FINE] > progress.best_top1[FINE]:
        progress.best_top1, progress.best_epoch, progress.stale_epochs = dict(record["val_top1"]), record["epoch"], 0
    else:
        progress.stale_epochs += 1


def flat_record(record: dict[str, Any]) -> dict[str, float]:
    """One level: val_top1 {"model": x} -> val_top1_model."""
    flat: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{task}": v for task, v in value.items()})
        else:
            flat[key] = value
    return flat


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    rows = [flat_record(r) for r in records]
    columns = list(dict.fromkeys(key for row in rows for key in row))  # --profile may join on resume
    write_csv(path, columns, [[row.get(column, "") for column in columns] for row in rows])


def previous_records(run_dir: Path, epochs_done: int) -> list[dict[str, Any]]:
    """The metrics.jsonl lines of the epochs the saved state covers; later (or torn) lines are dropped."""
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if record.get("epoch", 0) <= epochs_done:
                records.append(record)
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def what_was_kept(run_dir: Path, progress: Progress) -> str:
    """The truth about the run folder after a failed epoch: nothing yet, or the files of the last finished epoch."""
    if progress.epoch == 0 or not (run_dir / "last.st").is_file():
        return f"no epoch had finished, so {run_dir} holds no checkpoint yet; try a lower --lr or --clip-grad"
    best = f", best.st from epoch {progress.best_epoch}" if (run_dir / "best.st").is_file() else ""
    return (
        f"{run_dir} keeps epoch {progress.epoch}'s files (last.st{best}, state.st); "
        "try a lower --lr or --clip-grad in a new run"
    )


def resume_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The configuration of the run in `run_dir` (its config.json), with `overrides` (only `epochs` may grow).

    A finished run can be extended by a larger `epochs`; other options stay as the run started.
    """
    path = run_dir / "config.json"
    if not (run_dir / STATE_FILE).is_file() or not path.is_file():
        raise CarcliError(f"--resume: {run_dir} is not a carcli run folder with a saved state ({STATE_FILE})")
    saved = {k: v for k, v in json.loads(path.read_text()).items() if k != "run"}
    config = TrainConfig(**apply_options(TrainConfig, saved, str(path)))
    changed = {k: v for k, v in overrides.items() if getattr(config, k) != v}
    if set(changed) - RESUME_MAY_CHANGE:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(set(changed) - RESUME_MAY_CHANGE))
        allowed = ", ".join(f"--{k}" for k in sorted(RESUME_MAY_CHANGE))
        raise UsageError(f"--resume continues a run as it started; only {allowed} may change ({names})")
    for key, value in changed.items():
        setattr(config, key, value)
    config.out = str(run_dir)
    done = read_progress(run_dir).epoch
    if done >= (config.epochs or 0):
        raise UsageError(f"{run_dir} has finished its {done} epochs; pass a larger --epochs to extend it")
    return config
