"""The data feed of a run: which samples it trains and validates on, the loaders, and how their batches
become model input on the device.

Batches reach the model through a `prepare` step: a plain move to the device for images decoded and
augmented by the loader, or, with `cache` on, uint8 batches from the prepared store (`data.packed`)
augmented on the device (`data.batch_augment`). Loader workers are seeded per epoch, so a resumed run
draws the same order and augmentation as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from carcli.data.batch_augment import BatchAugment, batchable
from carcli.data.images import ImageDataset, find_unreadable
from carcli.data.layouts import DataSet, Sample
from carcli.data.packed import PackedDataset, PackedImages, StoreShape, load_or_build, store_shape
from carcli.data.sampling import EpochSampler, class_balanced_weights
from carcli.data.transforms import eval_transform, train_transform
from carcli.errors import CarcliError
from carcli.files import write_text
from carcli.models.registry import ArchSpec
from carcli.paths import cache_home
from carcli.progress import Reporter
from carcli.train.config import TrainConfig
from carcli.train.distributed import Dist, main_first

Prepare = Callable[[Tensor, tuple[int, int]], Tensor]  # (batch from the loader, (epoch, step)) -> model input
ImageSet = ImageDataset | PackedDataset


@dataclass
class Feed:
    """The loaders of a run and how their batches become model input on the device."""

    train_loader: DataLoader
    val_loader: DataLoader
    prepare_train: Prepare
    prepare_val: Prepare
    sampler: EpochSampler
    seed: int

    def start_epoch(self, epoch: int, skipped_images: int) -> None:
        """Draw `epoch`'s order and augmentation; skip the images a resumed run already trained on."""
        self.sampler.set_epoch(epoch)
        self.train_loader.generator.manual_seed(self.seed * 10_007 + epoch)  # workers' seeds: per epoch, resumable
        self.sampler.set_start(skipped_images)


def image_sizes(config: TrainConfig, spec: ArchSpec) -> tuple[int, int]:
    """The training and the validation image size."""
    img_size = config.img_size or spec.img_size
    return img_size, config.eval_img_size or img_size


def readable_splits(
    dataset: DataSet, run_dir: Path, reporter: Reporter, ddp: Dist, everything: bool = False
) -> tuple[list[Sample], list[Sample]]:
    """Train and eval samples without the files that cannot be decoded (listed in unreadable.txt).

    `everything` (--val-fraction 0): every train and val image is for training and none for validation.
    """
    train_samples, val_samples = dataset.split("train"), dataset.split(dataset.eval_split)
    if everything:
        train_samples, val_samples = dataset.split("train") + dataset.split("val"), []
        reporter.info(
            f"--val-fraction 0: training on all {len(train_samples)} train and val images, without validation; "
            "best.st is a copy of last.st (the last epoch)"
        )
    elif dataset.eval_split == "train":
        raise CarcliError(f"{dataset.root} gives no images to validate on; lower classes or raise --val-fraction")
    bad = set(find_unreadable([s.path for s in train_samples + val_samples]))
    if bad:
        listing = run_dir / "unreadable.txt"
        if ddp.main:
            write_text(listing, "".join(f"{p}\n" for p in sorted(bad)))
        reporter.warn(f"skipped {len(bad)} unreadable images; list written to {listing}")
        train_samples = [s for s in train_samples if s.path not in bad]
        val_samples = [s for s in val_samples if s.path not in bad]
    if not train_samples or not (val_samples or everything):
        raise CarcliError(f"{dataset.root}: no readable images left in the train or validation split")
    return train_samples, val_samples


def build_feed(
    config: TrainConfig, splits: tuple[list[Sample], list[Sample]], spec: ArchSpec, device: torch.device,
    reporter: Reporter, ddp: Dist,
) -> Feed:  # fmt: skip
    """The training loader (this process's shard, class-balanced with `--balance sampler`) and the validation one."""
    train_set, val_set, prepare_train, prepare_val = _datasets(config, splits, spec, device, reporter, ddp)
    train_labels = [s.label for s in splits[0]]
    balance = class_balanced_weights(train_labels) if config.balance == "sampler" else None
    sampler = EpochSampler(len(train_set), config.seed, balance, ddp.world, ddp.rank)
    return Feed(
        _loader(train_set, config, sampler), _loader(val_set, config, None), prepare_train, prepare_val, sampler,
        config.seed,
    )  # fmt: skip


def _datasets(
    config: TrainConfig, splits: tuple[list[Sample], list[Sample]], spec: ArchSpec, device: torch.device,
    reporter: Reporter, ddp: Dist,
) -> tuple[ImageSet, ImageSet, Prepare, Prepare]:  # fmt: skip
    """Decode-every-epoch data sets, or (`cache`) the prepared store with augmentation on the device;
    with each its prepare step."""
    train_samples, val_samples = splits
    augment, mean, std, aspect = config.augment_parts, spec.mean, spec.std, config.eval_aspect
    img_size, eval_size = image_sizes(config, spec)
    crop = config.bbox_margin if config.crop_to_bbox else None

    def to_device(images: Tensor, key: tuple[int, int]) -> Tensor:
        return images.to(device, non_blocking=True)

    if not config.cache:
        train_set = ImageDataset(train_samples, train_transform(img_size, mean, std, augment, aspect), img_size, crop)
        val_set = ImageDataset(val_samples, eval_transform(eval_size, mean, std, aspect), eval_size, crop)
        return train_set, val_set, to_device, to_device
    with main_first(ddp):
        train_store, val_store = (
            _store(samples, store_shape(size, training, aspect), crop, device, reporter)
            for samples, size, training in (
                (train_samples, img_size, True),
                (val_samples or train_samples[:1], eval_size, False),
            )
        )  # --val-fraction 0: a one-image placeholder val store that is never read
    val_set, prepare_val = PackedDataset(val_store), BatchAugment(eval_size, mean, std, None, device)
    if batchable(augment):
        on_device = BatchAugment(img_size, mean, std, augment, device, config.seed + ddp.rank, aspect)
        return PackedDataset(train_store), val_set, on_device, prepare_val
    reporter.info("--cache: affine, RandAugment and TrivialAugment have no batched form; augmenting per image")
    per_image = PackedDataset(train_store, train_transform(img_size, mean, std, augment, aspect))
    return per_image, val_set, to_device, prepare_val


def _store(
    samples: list[Sample], shape: StoreShape, crop: float | None, device: torch.device, reporter: Reporter
) -> PackedImages:
    """The prepared store of `samples`, built (JPEGs decoded on the GPU when training there) if not yet there."""
    what = "whole photos" if shape.whole else "evaluation views"

    def announce(path: Path) -> None:
        reporter.info(f"--cache: preparing {len(samples)} images ({what}, {shape.side} px high), once, into {path}")

    on_device = device if device.type == "cuda" else None
    return load_or_build(samples, shape, cache_home(), crop, device=on_device, announce=announce)


def _worker_seed(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _loader(dataset: ImageSet, config: TrainConfig, sampler: EpochSampler | None) -> DataLoader:
    """Training batches in the sampler's order, or evaluation batches in file order (sampler None).

    Workers start afresh each epoch from a generator seeded by the sampler's epoch, so a resumed
    run draws the same augmentation as an uninterrupted one.
    """
    workers = config.workers or 0
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=sampler is not None and len(sampler) > (config.batch_size or 1),  # no 1-image batch-norm steps
        num_workers=workers,
        persistent_workers=sampler is None and workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_seed,
        generator=torch.Generator().manual_seed(config.seed),
    )
