"""When training runs through torch.compile: `--compile auto|on|off` (carcli.train.runtime applies the choice).

`auto` compiles on CUDA at once. On CPUs it first trains one epoch eagerly, then compiles only when
the rest of the run is long enough to repay the compile time with the faster steps (`decide`):

    remaining steps x measured step time x (1 - 1 / expected speed-up) > estimated compile seconds

and after the first compiled epoch keeps the compiled model only if its median step is faster than the
eager epoch's (`keep_compiled`): the speed-up depends on the CPU as much as on the net, so a wrong
guess costs one compile and one epoch, not the run.

The estimates come from docs/benchmarks.md (2-core CPU VMs): a first compile took 53 s (resnet34) to
104 s (ghostnet) with an empty inductor cache; compiled steps were 1.25-1.4x faster for ghostnet,
1.04x for resnet34 and, depending on the CPU, 0.96-1.25x for efficientnet_lite0. Without a C++
compiler (inductor needs one on CPUs) `auto` trains eagerly and says so.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

COMPILE_SECONDS = 100.0  # a first CPU compile of a small net, training and evaluation graphs (measured 53-104 s)
SPEEDUP = {True: 1.25, False: 1.04}  # compiled / eager step rate on CPUs: depthwise nets, others
KEEP_BELOW = 0.98  # a compiled step must take under 98 % of an eager one to be kept
TRUE_VALUES = (True, "on")


@dataclass(frozen=True)
class Decision:
    """Whether to compile, and the one line that says why."""

    compile: bool
    why: str


def wants_compile(choice: str | bool) -> bool:
    """Whether a resolved --compile value means compiling now ("on"; True from older config files)."""
    return choice in TRUE_VALUES


def has_compiler() -> bool:
    """Whether a C++ compiler is on the PATH (torch inductor needs one to compile for CPUs)."""
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(name and shutil.which(name) for name in candidates)


def initial_choice(choice: str | bool, device_type: str, compiler: bool) -> str:
    """The --compile value at the start of a run: on/off as given; auto -> on with CUDA, off on CPUs without a
    compiler, else still auto (decided after the first epoch by `decide`)."""
    if choice in ("on", "off"):
        return str(choice)
    if isinstance(choice, bool):
        return "on" if choice else "off"
    if device_type == "cuda":
        return "on"
    return "auto" if compiler else "off"


def decide(
    step_seconds: float, remaining_steps: int, depthwise: bool, compile_seconds: float = COMPILE_SECONDS
) -> Decision:
    """`auto` on a CPU after the first epoch: compile when the time saved on the remaining steps beats the compile."""
    speedup = SPEEDUP[depthwise]
    saved = remaining_steps * step_seconds * (1 - 1 / speedup)
    verdict = "compiling" if saved > compile_seconds else "staying eager"
    return Decision(
        saved > compile_seconds,
        f"--compile auto: {verdict} ({remaining_steps} steps left at {1000 * step_seconds:.0f} ms; compiling "
        f"would save about {saved:.0f} s for about {compile_seconds:.0f} s of compiling)",
    )


def keep_compiled(eager_step_seconds: float, compiled_step_seconds: float) -> Decision:
    """`auto` on a CPU, after the first compiled epoch: keep the compiled model only when its median step
    beats the eager epoch's."""
    keep = compiled_step_seconds < KEEP_BELOW * eager_step_seconds
    verdict = "keeping it" if keep else "back to eager for the rest of the run"
    return Decision(
        keep,
        f"--compile auto: a compiled step took {1000 * compiled_step_seconds:.0f} ms against "
        f"{1000 * eager_step_seconds:.0f} ms eager; {verdict}",
    )
