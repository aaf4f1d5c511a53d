"""The order in which training samples are drawn: shuffled or class-balanced, resumable, shardable.

`EpochSampler` is a `DistributedSampler` (one replica when not distributed) whose order depends
only on (seed, epoch): a resumed run draws exactly the same samples, and `start` skips the part
of an epoch that was trained before an interruption. With `weights` it draws with replacement
in proportion to them (`class_balanced_weights` gives every class the same expected count).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    def __init__(
        self,
        size: int,
        seed: int,
        weights: Sequence[float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` samples of this replica's share of the current epoch."""
        self.start = start

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.total_size, True, generator=generator).tolist()
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        return (order * (self.total_size // len(order) + 1))[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        share = self._order()[self.rank : self.total_size : self.num_replicas]
        return iter(share[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def class_balanced_weights(labels: Sequence[int]) -> list[float]:
    """A sampling weight per sample, 1 / (its class's count): each class is drawn equally often."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [1.0 / counts[label] for label in labels]
