"""Where and how a run computes: the device's threads and seeds, the precision (autocast dtype and grad
scaler), the channels_last memory format, the EMA of the weights, and the model as it is trained (wrapped
for DistributedDataParallel and torch.compile; checkpoints always come from the plain model).

`--compile auto` on a CPU is decided after the first epoch and checked after the first compiled one
(`AutoCompile`, by carcli.train.compiling's cost model and measured step times).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from carcli.device import cpu_has_bf16
from carcli.errors import UsageError
from carcli.models.heads import CarcliModel
from carcli.progress import Reporter
from carcli.train.compiling import decide, keep_compiled, wants_compile
from carcli.train.config import TrainConfig
from carcli.train.distributed import Dist, broadcast


@dataclass
class Runtime:
    """The device a run computes on and its number format."""

    device: torch.device
    precision: str  # fp32, bf16 or fp16 (--precision auto resolved)
    autocast_dtype: torch.dtype | None  # None: full precision
    scaler: torch.amp.GradScaler | None  # fp16 only
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast region of a forward pass (off in full precision)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def layout(self, images: Tensor) -> Tensor:
        """`images` in the run's memory format."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def make_runtime(config: TrainConfig, device: torch.device, model: nn.Module) -> Runtime:
    """The run's precision (`auto` resolved for `device`) and memory format; bf16 on a CPU keeps `model`'s
    depthwise convolutions in fp32 (`DepthwiseConvInFp32`)."""
    precision = auto_precision(device) if config.precision == "auto" else config.precision
    autocast_dtype, scaler = _mixed_precision(precision, device)
    if device.type == "cpu" and precision == "bf16":
        depthwise_in_fp32(model)
    return Runtime(device, precision, autocast_dtype, scaler, config.channels_last)


def _mixed_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype (None: full precision) and grad scaler (fp16 only) for fp32, bf16 or fp16 on `device`."""
    if precision == "fp32":
        return None, None
    if precision == "fp16":
        if device.type != "cuda":
            raise UsageError("--precision fp16 needs a GPU; on a CPU use bf16 or fp32")
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU has no bf16 support; use --precision fp16 or fp32")
    return torch.bfloat16, None


def auto_precision(device: torch.device) -> str:
    """What `--precision auto` trains in on `device`, whatever the model.

    GPUs: bf16 where supported, else fp16. CPUs: bf16 when the CPU has native bf16 instructions (with
    depthwise convolutions kept in fp32 there: `depthwise_in_fp32`), fp32 otherwise. On the 2-core VM
    (AMX) bf16 roughly doubles the step of dense nets (resnet34) and makes EfficientNet-Lite0's 1.27x
    faster (docs/benchmarks.md).
    """
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def is_depthwise(module: nn.Module) -> bool:
    """Whether `module` is a depthwise convolution (one filter group per input channel)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def has_depthwise_conv(model: nn.Module) -> bool:
    """Whether any convolution of `model` is depthwise."""
    return any(is_depthwise(m) for m in model.modules())


class DepthwiseConvInFp32(nn.Conv2d):
    """A depthwise convolution that computes in fp32 inside a CPU autocast region, its output cast back to
    its input's dtype: oneDNN's bf16 depthwise backward is 3-10x slower than its fp32 one, enough to make
    bf16 training of EfficientNet-Lite0 slower than fp32, while the dense 1x1 convolutions around it gain
    (benchmarks/step_speed.py). Same parameters as nn.Conv2d, so checkpoints do not change."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float()).to(x.dtype)


def depthwise_in_fp32(model: nn.Module) -> None:
    """Make every plain nn.Conv2d of `model` that is depthwise a `DepthwiseConvInFp32`.

    Subclasses (timm's Conv2dSame and the like) keep their own forward and stay in the autocast dtype."""
    for module in model.modules():
        if type(module) is nn.Conv2d and is_depthwise(module):
            module.__class__ = DepthwiseConvInFp32


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def share_cores(device: torch.device, workers: int, ddp: Dist) -> None:
    """On CPU, leave one core per loader worker: oversubscribed OpenMP threads slow training many times over."""
    if device.type == "cpu" and (workers or ddp.world > 1):
        cores = max(1, (os.cpu_count() or 1) // ddp.world)
        torch.set_num_threads(max(1, cores - workers))


def make_ema(model: nn.Module, config: TrainConfig) -> AveragedModel | None:
    """The exponential moving average of `model`'s weights (`--ema`), None without it."""
    if not config.ema:
        return None

    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        # decay warms up as in timm's ModelEmaV3: (1 + n) / (10 + n), capped at ema_decay
        n = int(num_averaged)
        decay = min(config.ema_decay, (1 + n) / (10 + n))
        for avg, cur in zip(averaged, current, strict=True):
            if avg.is_floating_point():
                avg.lerp_(cur.to(avg.dtype), 1 - decay)
            else:  # counters such as num_batches_tracked
                avg.copy_(cur)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def set_trainable(model: CarcliModel, frozen: bool) -> None:
    """Freeze (no gradients, batch-norm statistics fixed) or unfreeze the backbone."""
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)
    model.train()
    if frozen:
        model.backbone.eval()


def wrap_for_training(model: CarcliModel, config: TrainConfig, ddp: Dist, device: torch.device) -> nn.Module:
    """DDP when distributed, torch.compile when asked; checkpoints always come from the plain `model`."""
    net: nn.Module = model
    if ddp.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        staged = config.freeze_backbone or config.unfreeze_after > 0
        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=staged)
    return _compiled(net) if wants_compile(config.compile) else net


def _compiled(net: nn.Module) -> nn.Module:
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a part that fails to compile runs eagerly, the run goes on
    return torch.compile(net)  # type: ignore[return-value]


@dataclass
class AutoCompile:
    """`--compile auto` on a CPU, epoch by epoch (carcli.train.compiling): after the first epoch, compile the
    net if the rest of the run repays it; after the first compiled epoch, go back to the eager net unless its
    steps are faster. Every process follows rank 0's decisions."""

    depthwise: bool  # the net has depthwise convolutions (a larger expected speed-up)
    reporter: Reporter
    ddp: Dist
    eager: nn.Module | None = None  # the net before compiling, while the compiled one is on trial
    eager_step_seconds: float = 0.0
    settled: bool = False

    def after_epoch(self, net: nn.Module, train_stats: dict, steps_left: int) -> nn.Module:
        """The net for the next epoch, given the epoch just trained (`train_stats["step_seconds"]`, its median step)."""
        if self.settled or not steps_left:
            return net
        step_seconds = train_stats["step_seconds"]
        if self.eager is None:
            decision = broadcast(decide(step_seconds, steps_left, self.depthwise), self.ddp)
            self.reporter.info(decision.why)
            if not decision.compile:
                self.settled = True
                return net
            self.eager, self.eager_step_seconds = net, step_seconds
            return _compiled(net)
        self.settled = True
        decision = broadcast(keep_compiled(self.eager_step_seconds, step_seconds), self.ddp)
        self.reporter.info(decision.why)
        return net if decision.compile else self.eager
