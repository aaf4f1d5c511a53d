"""Knowledge distillation: teachers (trained carcli checkpoints) and the term they add to the training loss.

A teacher is any checkpoint `load_model` reads (plain, pruned or an ensemble, which counts as one
teacher). It runs in eval mode without gradients on the student's augmented batch, brought to the
teacher's own input: the student's normalisation undone, resized to the teacher's `img_size`, then
normalised with the teacher's mean and std. Several teachers are averaged (their temperature-softened
probabilities). The term is, for every task the student and the teachers predict,

    T^2 * KL( mean_teachers softmax(z_teacher / T) || softmax(z_student / T) )   (batch mean)

summed over the tasks (Hinton et al., 2015); `train` adds `distill_weight` times it to the loss.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.taxonomy import FINE
from carcli.errors import CarcliError


class Teachers(nn.Module):
    """Frozen teacher models and how to turn a student batch into each one's input."""

    def __init__(
        self, models: Sequence[nn.Module], metas: Sequence[CheckpointMeta], student_mean: Sequence[float],
        student_std: Sequence[float],
    ) -> None:  # fmt: skip
        super().__init__()
        self.models = nn.ModuleList(models).eval().requires_grad_(False)
        self.sizes = [meta.img_size for meta in metas]
        self.register_buffer("student_mean", _column(student_mean), False)
        self.register_buffer("student_std", _column(student_std), False)
        self.register_buffer("means", torch.stack([_column(meta.mean) for meta in metas]), False)
        self.register_buffer("stds", torch.stack([_column(meta.std) for meta in metas]), False)

    def train(self, mode: bool = True) -> Teachers:
        return super().train(False)  # teachers always run in eval mode

    @torch.no_grad()
    def probs(self, images: Tensor, temperature: float) -> dict[str, Tensor]:
        """The teachers' mean temperature-softened probabilities per task for a (normalised) student batch."""
        raw = images.float() * self.student_std + self.student_mean
        summed: dict[str, list[Tensor]] = {}
        for model, size, mean, std in zip(self.models, self.sizes, self.means, self.stds, strict=True):
            view = raw
            if tuple(raw.shape[-2:]) != (size, size):
                view = F.interpolate(raw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            for task, z in model((view - mean) / std).items():
                summed.setdefault(task, []).append((z.float() / temperature).softmax(1))
        return {task: torch.stack(parts).mean(0) for task, parts in summed.items() if len(parts) == len(self.models)}

    def loss(self, images: Tensor, student: dict[str, Tensor], temperature: float) -> Tensor:
        """The distillation term for a batch and the student's logits on it (see the module docstring)."""
        return distill_loss(student, self.probs(images, temperature), temperature)


def distill_loss(student: dict[str, Tensor], teacher_probs: dict[str, Tensor], temperature: float) -> Tensor:
    """T^2 * KL(teacher || student) on temperature-softened distributions, summed over the tasks both have."""
    total = next(iter(student.values())).new_zeros((), dtype=torch.float32)
    for task, probs in teacher_probs.items():
        if task in student:
            log_student = (student[task].float() / temperature).log_softmax(1)
            total = total + F.kl_div(log_student, probs, reduction="batchmean") * temperature**2
    return total


def load_teachers(
    paths: Sequence[str], tasks: dict[str, list[str]], mean: Sequence[float], std: Sequence[float],
    device: torch.device,
) -> Teachers:  # fmt: skip
    """The checkpoints `paths` as Teachers for a student with these tasks (class names) and normalisation."""
    from carcli.models.builder import load_model

    models, metas = [], []
    for path in paths:
        model, meta = load_model(Path(path), str(device))
        if meta.fine_names != tasks[FINE]:
            raise CarcliError(
                f"--teacher {path} predicts other classes than this data set's {len(tasks[FINE])} (its "
                f"{len(meta.fine_names)} classes, or their order, differ); distil from a model of these classes"
            )
        models.append(model)
        metas.append(meta)
    return Teachers(models, metas, mean, std).to(device)


def fingerprint(path: str) -> str:
    """The SHA-256 of a teacher file: a resumed run checks that its teachers are the ones it started with."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise CarcliError(f"--teacher {path}: cannot read it ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _column(values: Sequence[float]) -> Tensor:
    return torch.tensor(list(values), dtype=torch.float32).view(1, 3, 1, 1)
