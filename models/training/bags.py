"""Bags of tile features -> float32 tensors: dataset, loader and (padded) batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from models.errors import TrainingDataError
from models.training.config import TrainConfig


def _feature_dim(bags: Sequence[Any]) -> int:
    if len(bags) == 0:
        raise TrainingDataError("no bags given")
    dim = getattr(bags, "feature_dim", None)
    if dim is None:
        dim = int(np.shape(bags[0])[-1])
    return int(dim)


class _BagDataset(Dataset):
    """Bags at ``indices`` as float32 tensors, checked against the expected feature dim."""

    def __init__(
        self,
        bags: Sequence[Any],
        indices: np.ndarray,
        feature_dim: int,
        slide_ids: Sequence[str],
        describe_expected: str,
        error: type[Exception],
    ) -> None:
        self.bags, self.indices, self.feature_dim = bags, indices, feature_dim
        self.slide_ids, self.describe_expected, self.error = slide_ids, describe_expected, error

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        j = int(self.indices[i])
        bag = torch.as_tensor(self.bags[j])
        if bag.dim() != 2 or bag.shape[1] != self.feature_dim:
            raise self.error(
                f"bag of slide {self.slide_ids[j]!r} has shape {tuple(bag.shape)}, expected "
                f"(N, {self.feature_dim}) {self.describe_expected}"
            )
        return bag.float(), j


def _as_list(items: list[tuple[Tensor, int]]) -> list[tuple[Tensor, int]]:
    return items


def _loader(dataset: _BagDataset, config: TrainConfig, shuffle: bool) -> DataLoader:
    """Batches of ``config.batch_size`` bags. The shuffle order comes from a sampler with its
    own generator seeded by ``config.seed``, so it does not depend on ``num_workers``."""
    sampler = None
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(config.seed))
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=_as_list,
        generator=torch.Generator().manual_seed(config.seed),  # worker seeds only
        persistent_workers=config.num_workers > 0,
    )


def _batch(
    items: list[tuple[Tensor, int]],
    max_tiles: int | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Bags -> (x (B, N, D), mask (B, N) or None for one bag, slide indices (B,))."""
    bags = [bag for bag, _ in items]
    index = torch.tensor([j for _, j in items], device=device)
    if max_tiles is not None:
        bags = [
            bag[torch.randperm(len(bag), generator=generator)[:max_tiles].sort().values]
            if len(bag) > max_tiles
            else bag
            for bag in bags
        ]
    if len(bags) == 1:
        return bags[0].unsqueeze(0).to(device, non_blocking=True), None, index
    n = max(len(bag) for bag in bags)
    x = torch.zeros(len(bags), n, bags[0].shape[1])
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)] = bag
        mask[i, : len(bag)] = True
    return x.to(device, non_blocking=True), mask.to(device), index
