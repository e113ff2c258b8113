"""Poisson sampling of logical batches from the job's secret randomness.

Each training row joins each logical batch independently with probability q (the
sampled Gaussian mechanism of Abadi et al. 2016; Mironov, Talwar & Zhang 2019). The
draw of step t is :meth:`~privtrain.trainer.dp_randomness.DPRandomness.bernoulli` of
stream SAMPLING, index t: nothing a trainer sends or sees decides it. An empty batch
is still yielded (and is still a DP step). Several processes of one job each sample
their own share of the rows in lockstep (their own lane of the same draw index), so
the union over ranks is Poisson sampling of all rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate

from privtrain.trainer.dp_randomness import DPRandomness, Stream


class SecurePoissonSampler(UniformWithReplacementSampler):
    """Yields ``steps`` lists of row indices per epoch, each row in with probability ``sample_rate``.

    Parameters
    ----------
    rows : ndarray of int
        The dataset indices this sampler draws from (all rows, or one rank's share).
    sample_rate : float
        q.
    steps : int
        Logical batches per epoch.
    randomness : DPRandomness
        The job's secret randomness; its SAMPLING counter numbers the steps, so a
        checkpoint that restores it resumes the same sequence of batches.
    lane : int
        This process's rank in a multi-process job (0 otherwise).
    """

    def __init__(self, *, rows: np.ndarray, sample_rate: float, steps: int,
                 randomness: DPRandomness, lane: int = 0) -> None:
        super().__init__(num_samples=max(1, len(rows)), sample_rate=sample_rate, steps=steps)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.randomness = randomness
        self.lane = lane

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            index = self.randomness.take(Stream.SAMPLING)
            mask = self.randomness.bernoulli(Stream.SAMPLING, index, len(self.rows), self.sample_rate,
                                             lane=self.lane)
            yield self.rows[mask].tolist()


def poisson_loader(data: Dataset[tuple[torch.Tensor, ...]], *, sample_rate: float, steps: int,
                   randomness: DPRandomness, rows: np.ndarray | None = None,
                   lane: int = 0) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A DataLoader of Poisson batches (empty ones included, with the right shapes and dtypes).

    Opacus' ``BatchMemoryManager`` accepts it as it accepts a ``DPDataLoader``.
    """
    all_rows = np.arange(len(data)) if rows is None else rows  # type: ignore[arg-type]
    sampler = SecurePoissonSampler(rows=all_rows, sample_rate=sample_rate, steps=steps,
                                   randomness=randomness, lane=lane)
    first = data[0]
    collate = wrap_collate_with_empty(
        collate_fn=default_collate, sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
        dtypes=[dtype_safe(x) for x in first],
    )
    return DataLoader(data, batch_sampler=sampler, collate_fn=collate)
