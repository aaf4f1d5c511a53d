"""The resumable state of a training run: `state.st` beside the checkpoints in the run folder.

One safetensors file, written atomically, holds everything `--resume` needs to continue exactly:
the raw model weights, the EMA weights, the optimizer's tensors and the RNG states (tensors); the
progress (epochs and steps done, best metric, patience count), the optimizer's settings, the AMP
grad scaler and the Python/NumPy RNG positions (JSON in the metadata). The learning-rate schedule
is a pure function of the step count, so it is rebuilt from the step count instead of stored.
`save_state` and `restore_state` move that state out of and back into a run's model, optimizer,
schedule, EMA and grad scaler.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from carcli.checkpoint import write_safetensors
from carcli.errors import CarcliError
from carcli.train.optim import fast_forward

STATE_FILE = "state.st"
STATE_KEY = "carcli_state"


@dataclass
class Progress:
    """Where a run stands: `epoch` epochs are complete, plus `step` steps of the next one."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_top1: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best one (early stopping)


@dataclass
class RunState:
    progress: Progress
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    ema: dict[str, Tensor] | None = None
    scaler: dict[str, Any] | None = None


def save_run_state(run_dir: Path, state: RunState) -> None:
    """Write `state.st` atomically (the previous one stays intact until the new one is complete)."""
    tensors = {f"model.{k}": v for k, v in state.model.items()}
    if state.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in state.ema.items()})
    optimizer_tensors, optimizer_meta = _split_optimizer(state.optimizer)
    tensors.update(optimizer_tensors)
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    meta = {
        "progress": asdict(state.progress),
        "optimizer": optimizer_meta,
        "scaler": state.scaler,
        "rng": rng_meta,
        "has_ema": state.ema is not None,
    }
    write_safetensors(run_dir / STATE_FILE, tensors, {STATE_KEY: json.dumps(meta)})


def load_run_state(run_dir: Path) -> RunState:
    """Read `state.st` and restore the RNGs; a clear error when it is missing or unreadable."""
    meta, tensors = _read(run_dir, with_tensors=True)
    _restore_rng(tensors, meta["rng"])
    return RunState(
        progress=Progress(**meta["progress"]),
        model=_prefixed(tensors, "model."),
        optimizer=_join_optimizer(tensors, meta["optimizer"]),
        ema=_prefixed(tensors, "ema.") if meta["has_ema"] else None,
        scaler=meta["scaler"],
    )


def save_state(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: AveragedModel | None,
    scaler: torch.amp.GradScaler | None,
    progress: Progress,
) -> None:
    """Write the run's resumable state as it stands now."""
    save_run_state(
        run_dir,
        RunState(
            progress=progress,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            ema=ema.state_dict() if ema is not None else None,
            scaler=scaler.state_dict() if scaler is not None else None,
        ),
    )


def restore_state(
    state: RunState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel | None,
    scaler: torch.amp.GradScaler | None,
) -> Progress:
    """Load a saved state into the run's objects; the progress it had made."""
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    _match_param_layout(optimizer)
    fast_forward(scheduler, state.progress.global_step)  # after the optimizer: its lr is the (maybe longer) schedule's
    if ema is not None and state.ema is not None:
        ema.load_state_dict(state.ema)
    if scaler is not None and state.scaler:
        scaler.load_state_dict(state.scaler)
    return state.progress


def _match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give restored optimizer tensors their parameter's memory layout (channels_last weights keep NCHW state
    when loaded); fused AdamW pairs elements by position, so a layout mismatch would corrupt the update."""
    for param, values in optimizer.state.items():
        for name, value in values.items():
            if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                values[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def read_progress(run_dir: Path) -> Progress:
    """How far the saved state of `run_dir` got, without reading its tensors."""
    return Progress(**_read(run_dir, with_tensors=False)[0]["progress"])


def _read(run_dir: Path, with_tensors: bool) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from safetensors import safe_open

    path = run_dir / STATE_FILE
    if not path.is_file():
        raise CarcliError(f"{run_dir} has no {STATE_FILE}: it is not a carcli run folder that can be resumed")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})[STATE_KEY])
            keys = list(handle.keys()) if with_tensors else []
            tensors = {key: handle.get_tensor(key) for key in keys}
    except Exception as exc:
        raise CarcliError(f"{path} is corrupt or not a carcli run state") from exc
    return meta, tensors


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch optimizer state -> tensors `optimizer.<param>.<name>` + JSON for everything else."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{param}.{name}"] = value
            else:
                scalars.setdefault(str(param), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in _prefixed(tensors, "optimizer.").items():
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    for param, values in meta["scalars"].items():
        state.setdefault(int(param), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, python_gauss = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), python_gauss],
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, python_gauss = meta["python"]
    random.setstate((version, tuple(internal), python_gauss))
