"""Each training process's share of the user's data.

In memory (.csv, .txt, smaller .npy): rank r of N samples from values r, r + N, r + 2N, … of the
shuffled training split (`shard`). Memory-mapped (.npy of millions of values): `MappedData` splits
the file into blocks of `BLOCK_VALUES` consecutive values, holds a seeded random set of blocks out,
deals the training blocks to the ranks, and samples each rank's blocks in place: per process only
the block numbers are in memory, and the file's pages are shared through the page cache.
"""

from collections.abc import Iterator

import numpy as np
import torch

from ctm_core.data import CHUNK_VALUES, DataFileError

BLOCK_VALUES = 1024
# What rank 0 reads of a memory-mapped split for the report: the reference distribution of the
# evaluation table (and the explorer's KDE points), and the held-out values.
EVAL_TRAIN_VALUES = 1_000_000
EVAL_HOLDOUT_VALUES = 5_000


def shard(values: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s share of an in-memory training split: every world_size-th value (a view).

    The split comes shuffled (`split_holdout`), so each shard is a random subset of it; one
    process (world_size 1) gets all of it.
    """
    if world_size == 1:
        return values
    part = values[rank::world_size]
    if part.size < 2:
        raise DataFileError(
            f"{values.size} training values cannot be shared by {world_size} processes "
            "(each needs at least 2)"
        )
    return part


class MappedData:
    """A memory-mapped 1D data set: a block holdout, and one rank's training blocks sampled in place.

    Block b holds values [b·B, (b + 1)·B) (the last one may be shorter). A permutation of the
    blocks seeded by `seed` puts round(holdout · blocks) of them out, the same on every rank; the
    rest are the training blocks, and rank r gets every world_size-th of them.
    """

    def __init__(
        self,
        values: np.ndarray,
        holdout: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        block: int = BLOCK_VALUES,
    ) -> None:
        if values.ndim != 1:
            raise ValueError(f"MappedData needs a 1-D array, got shape {values.shape}")
        self.values = values
        self.block = block
        n_blocks = -(-values.size // block)
        order = np.random.default_rng(seed).permutation(n_blocks)
        n_held = round(holdout * n_blocks)
        self.holdout_blocks = np.sort(order[:n_held])
        self.train_blocks = np.sort(order[n_held:])
        self.n_holdout = int(self._sizes(self.holdout_blocks).sum())
        self.n_train = int(values.size - self.n_holdout)
        if self.n_train < 2:
            raise DataFileError(
                f"holdout fraction {holdout} of {values.size} values in blocks of {block} leaves "
                f"{self.n_train} for training; need at least 2"
            )
        if self.train_blocks.size < world_size:
            raise DataFileError(
                f"{self.train_blocks.size} training blocks of {block} values cannot be shared by "
                f"{world_size} processes"
            )
        self.rank_blocks = self.train_blocks[rank::world_size]
        self._rank_ends = np.cumsum(self._sizes(self.rank_blocks))

    def _sizes(self, blocks: np.ndarray) -> np.ndarray:
        return np.minimum(self.block, self.values.size - blocks * self.block)

    def _indices(self, blocks: np.ndarray, ends: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """File indices of the given positions in the concatenation of `blocks` (ends: cumsum)."""
        which = np.searchsorted(ends, positions, side="right")
        starts = ends[which] - self._sizes(blocks[which])
        return blocks[which] * self.block + (positions - starts)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n of this rank's training values drawn uniformly with replacement; shape (n,), float32."""
        positions = torch.randint(int(self._rank_ends[-1]), (n,), generator=generator).numpy()
        picked = self.values[self._indices(self.rank_blocks, self._rank_ends, positions)]
        return torch.from_numpy(np.asarray(picked, dtype=np.float32))

    def train_chunks(self) -> Iterator[np.ndarray]:
        """The whole training split (every rank's blocks) as float64 chunks, in file order."""
        per_chunk = max(CHUNK_VALUES // self.block, 1)
        for i in range(0, self.train_blocks.size, per_chunk):
            blocks = self.train_blocks[i : i + per_chunk]
            idx = (blocks[:, None] * self.block + np.arange(self.block)).reshape(-1)
            yield np.asarray(self.values[idx[idx < self.values.size]], dtype=np.float64)

    def train_moments(self) -> tuple[float, float]:
        """(mean, population std) of the whole training split, in two passes over its chunks."""
        mean = sum(float(chunk.sum()) for chunk in self.train_chunks()) / self.n_train
        spread = sum(float(((chunk - mean) ** 2).sum()) for chunk in self.train_chunks())
        return mean, (spread / self.n_train) ** 0.5

    def train_sample(self, limit: int, seed: int) -> np.ndarray:
        """The training split (float64) if it has at most `limit` values, else `limit` of its values
        drawn uniformly with replacement (seeded); for the report, on rank 0."""
        return self._subset(self.train_blocks, limit, seed)

    def holdout_sample(self, limit: int, seed: int) -> np.ndarray:
        """As `train_sample`, from the held-out blocks (empty without a holdout)."""
        return self._subset(self.holdout_blocks, limit, seed)

    def _subset(self, blocks: np.ndarray, limit: int, seed: int) -> np.ndarray:
        ends = np.cumsum(self._sizes(blocks))
        total = int(ends[-1]) if ends.size else 0
        if total <= limit:
            positions = np.arange(total)
        else:
            positions = np.sort(np.random.default_rng(seed).integers(total, size=limit))
        return np.asarray(self.values[self._indices(blocks, ends, positions)], dtype=np.float64)
