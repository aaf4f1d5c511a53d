"""One epoch: the training steps (`train_one_epoch`) and validation (`validate`), both over one
`StepContext` that carcli.train.loop builds once per run; at the end of a run, the hierarchy weights
fitted on validation (`fit_hierarchy`).

A training step: the batch is prepared on the device, mixed (Mixup/CutMix), passed through the net under
autocast, its loss (every task's, plus distillation from --teacher models) back-propagated; every
`accum_steps` batches the optimizer updates, the schedule steps and the EMA follows. `profile` splits each
step's time into loader wait, preparation and compute.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from carcli.checkpoint import load_checkpoint, save_checkpoint
from carcli.data.taxonomy import FINE
from carcli.distill import Teachers
from carcli.errors import CarcliError
from carcli.models.heads import CarcliModel
from carcli.progress import Reporter
from carcli.train.config import TrainConfig
from carcli.train.distributed import Dist
from carcli.train.feed import Feed
from carcli.train.losses import multitask_loss, task_targets
from carcli.train.reporting import Step
from carcli.train.run_state import Progress
from carcli.train.runtime import Runtime


@dataclass
class StepContext:
    """Everything the steps of a run read and advance, built once before the first epoch."""

    config: TrainConfig
    runtime: Runtime  # device, precision, grad scaler, memory format
    model: CarcliModel  # the plain model: the optimizer's parameters, the EMA's source, the checkpoints' weights
    net: nn.Module  # what batches go through: `model`, wrapped for DDP and torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    feed: Feed
    fine_to: dict[str, Tensor]  # fine label -> each task's label
    class_weights: dict[str, Tensor] | None  # --balance weights
    mixer: Any  # Mixup/CutMix, None when off
    teachers: Teachers | None
    progress: Progress
    reporter: Reporter
    ddp: Dist
    stop: threading.Event = field(default_factory=threading.Event)  # set by Ctrl-C: stop after the next update

    @property
    def evaluated(self) -> nn.Module:
        """The weights validated and saved: the EMA's when `ema` is on."""
        return self.ema.module if self.ema is not None else self.model


class NonFiniteLoss(CarcliError):
    """The training loss became NaN or infinite; the epoch stops before the weights take the bad step."""

    def __init__(self, value: float) -> None:
        super().__init__(f"the loss became {value} (not finite) and the run stopped")


class StepClock:
    """Splits each training step's wall time into phases (loader wait, preparation, compute) when enabled."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device, self.enabled = device, enabled
        self.totals: dict[str, float] = {}
        self.steps = 0
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap to `phase` (waiting for the GPU first, so it is real)."""
        if not self.enabled:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self.last
        self.last = now
        self.steps += phase == "compute"

    def per_step(self) -> dict[str, float]:
        """Milliseconds per step of each phase ({} when disabled)."""
        return {phase: 1000 * total / max(1, self.steps) for phase, total in self.totals.items()}


def profile_line(epoch: int, per_step: dict[str, float]) -> str:
    """`--profile`'s line: where an epoch's step time went."""
    total = sum(per_step.values()) or 1.0
    parts = ", ".join(f"{phase} {ms:.1f} ms ({100 * ms / total:.0f} %)" for phase, ms in per_step.items())
    return f"profile, epoch {epoch}, per step: {parts}"


def train_one_epoch(ctx: StepContext) -> dict[str, Any]:
    """Train the (rest of the) current epoch: loss, top-1, images/s, the median step's seconds (what
    `--compile auto` compares: a compile's steps do not move it), the last lr and the profile.

    Once `ctx.stop` is set it stops after the next optimizer update."""
    progress, optimizer, device = ctx.progress, ctx.optimizer, ctx.runtime.device
    seen, loss_sum, correct = 0, 0.0, 0
    lr = optimizer.param_groups[-1]["lr"]
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    last = len(ctx.feed.train_loader) - 1
    clock = StepClock(device, ctx.config.profile)
    step_ends = [start]
    for index, (images, labels) in enumerate(ctx.feed.train_loader):
        clock.lap("load")
        images = ctx.feed.prepare_train(images, (progress.epoch + 1, progress.step))
        labels = labels.to(device, non_blocking=True)
        clock.lap("prepare")
        update = (index + 1) % ctx.config.accum_steps == 0 or index == last
        loss, logits = _forward_backward(ctx, images, labels, update)
        if update:
            lr = optimizer.param_groups[-1]["lr"]
            _update(ctx)
        progress.step += 1
        clock.lap("compute")
        step_ends.append(time.perf_counter())
        batch = labels.numel()
        seen += batch
        loss_sum += loss.item() * batch
        correct += int((logits[FINE].argmax(1) == labels).sum())
        ctx.reporter.progress(Step(loss_sum / seen, correct / seen, seen / _since(start)))
        if ctx.stop.is_set() and update:
            break
    return {
        "loss": loss_sum / max(1, seen),
        "top1": correct / max(1, seen),
        "images_per_s": seen / _since(start),
        "step_seconds": statistics.median(b - a for a, b in itertools.pairwise(step_ends)) if seen else 0.0,
        "lr": lr,
        "profile": clock.per_step(),
    }


def _forward_backward(
    ctx: StepContext, images: Tensor, labels: Tensor, update: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """One batch's loss (mixed when Mixup/CutMix is on), its gradients accumulated; the loss and the logits.

    Under DDP, gradients are synchronised only on the batch that `update`s."""
    config, net = ctx.config, ctx.net
    if ctx.mixer is not None:
        images, labels = ctx.mixer(images, labels)
    images = ctx.runtime.layout(images)
    sync = contextlib.nullcontext() if update or not hasattr(net, "no_sync") else net.no_sync()
    with sync:
        with ctx.runtime.autocast():
            logits = net(images)
            targets = task_targets(labels, ctx.fine_to, logits)
            loss, _ = multitask_loss(
                logits, targets, config.loss_weights, config.label_smoothing, ctx.class_weights, config.loss == "cot"
            )
            if ctx.teachers is not None:
                loss = loss + config.distill_weight * ctx.teachers.loss(images, logits, config.distill_temperature)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(loss.item())
        scaled = loss / config.accum_steps
        (ctx.runtime.scaler.scale(scaled) if ctx.runtime.scaler is not None else scaled).backward()
    return loss, logits


def _update(ctx: StepContext) -> None:
    """One optimizer update (gradients unscaled and clipped first), then the schedule, the EMA, the step count."""
    optimizer, scaler, clip_grad = ctx.optimizer, ctx.runtime.scaler, ctx.config.clip_grad
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad:
        nn.utils.clip_grad_norm_([p for p in ctx.model.parameters() if p.grad is not None], clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ctx.scheduler.step()
    if ctx.ema is not None:
        ctx.ema.update_parameters(ctx.model)
    ctx.progress.global_step += 1


def _since(start: float) -> float:
    return max(1e-9, time.perf_counter() - start)


@torch.no_grad()
def validate(ctx: StepContext) -> dict[str, Any]:
    """Mean loss (sum over tasks, no smoothing) and top-1 / top-5 per task of the evaluated weights."""
    seen, loss_sum = 0, 0.0
    top1: dict[str, int] = {}
    top5: dict[str, int] = {}
    for logits, labels in _eval_batches(ctx.evaluated, ctx):
        targets = task_targets(labels, ctx.fine_to, logits)
        loss, _ = multitask_loss({t: z.float() for t, z in logits.items()}, targets)
        seen += labels.numel()
        loss_sum += loss.item() * labels.numel()
        for task, z in logits.items():
            k = min(5, z.shape[1])
            hits = (z.topk(k, dim=1).indices == targets[task][:, None]).int()
            top1[task] = top1.get(task, 0) + int(hits[:, 0].sum())
            top5[task] = top5.get(task, 0) + int(hits.sum())
    return {
        "loss": loss_sum / max(1, seen),
        "top1": {t: c / max(1, seen) for t, c in top1.items()},
        "top5": {t: c / max(1, seen) for t, c in top5.items()},
    }


def _eval_batches(model: nn.Module, ctx: StepContext) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """({task: logits}, fine labels) of every validation batch, the model in eval mode."""
    model.eval()
    for index, (images, labels) in enumerate(ctx.feed.val_loader):
        images = ctx.runtime.layout(ctx.feed.prepare_val(images, (0, index)))
        with ctx.runtime.autocast():
            logits = model(images)
        yield logits, labels.to(ctx.runtime.device)


@torch.no_grad()
def fit_hierarchy(run_dir: Path, ctx: StepContext) -> dict[str, Any] | None:
    """Fit the hierarchy weights of best.st on validation and store them in best.st and last.st.

    A copy of the evaluated model (its structure: pruned, masked) takes best.st's tensors.
    Returns the fit (None for a model without make/type heads; nothing is written then)."""
    from carcli.hierarchy import fit_weights

    model = copy.deepcopy(ctx.evaluated)
    best, meta = load_checkpoint(run_dir / "best.st")
    model.load_state_dict(best)
    chunks: dict[str, list[Tensor]] = {}
    for logits, labels in _eval_batches(model, ctx):
        for task, z in {**logits, "labels": labels}.items():
            chunks.setdefault(task, []).append(z.float().softmax(1).cpu() if task != "labels" else z.cpu())
    labels = torch.cat(chunks.pop("labels"))
    fit = fit_weights({task: torch.cat(parts) for task, parts in chunks.items()}, labels, meta)
    for name in ("best.st", "last.st") if fit else ():
        state, saved = load_checkpoint(run_dir / name)
        save_checkpoint(run_dir / name, state, saved.replace(hierarchy=fit))
    return fit


def report_hierarchy(run_dir: Path, ctx: StepContext) -> None:
    """Fit and store best.st's hierarchy weights (multi-task heads), said in one line."""
    fit = fit_hierarchy(run_dir, ctx)
    if fit is not None:
        weights = ", ".join(f"{task} {w:g}" for task, w in fit["weights"].items())
        ctx.reporter.info(
            f"hierarchy weights fitted on validation ({weights}): {FINE} top-1 {fit['val_top1']:.1%} "
            f"combined, {fit['val_plain_top1']:.1%} fine head alone (eval/predict --hierarchy use them)"
        )
