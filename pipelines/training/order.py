"""Data order and per-chunk randomness as pure functions of (seed, step, chunk).

Exact resume and rank-count independence both follow from this: the images of a step, the
noise levels/noise the loss draws and the dropout masks depend only on the seed, the step
number and which micro-batch ("chunk") of the global batch is being processed, never on
how many steps this process has run or how many ranks share the batch.

Order: image position p = step * batch + j walks through epochs; epoch e is the permutation
`numpy.random.default_rng([seed, e]).permutation(N)`, so every image is seen once per epoch.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch


class EpochOrder:
    """Indices of global batch positions; caches the last few epoch permutations."""

    def __init__(self, n: int, seed: int, cache: int = 3):
        self.n, self.seed, self._cache, self._size = int(n), int(seed), OrderedDict(), cache

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Dataset indices of global positions start .. start+count-1."""
        pos = np.arange(start, start + count, dtype=np.int64)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            out[sel] = self.permutation(int(epoch))[pos[sel] % self.n]
        return out


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """A 63-bit seed for chunk `chunk` of step `step` (numpy SeedSequence mixing)."""
    words = np.random.SeedSequence([seed, step, chunk]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def chunk_generators(seed: int, step: int, chunk: int, device: torch.device) -> torch.Generator:
    """Seed the global RNG (dropout, label dropout) and return the loss's generator for one chunk."""
    s = chunk_seed(seed, step, chunk)
    torch.manual_seed(s ^ 0x5DEECE66D)  # global RNG: dropout masks inside the network
    return torch.Generator(device).manual_seed(s)


class ChunkSampler:
    """Batch sampler for a DataLoader: the index lists this rank processes, from `start_step` on."""

    def __init__(self, order: EpochOrder, batch_size: int, batch_gpu: int, rounds: int, rank: int,
                 start_step: int):
        self.order, self.batch_size, self.batch_gpu = order, batch_size, batch_gpu
        self.rounds, self.rank, self.start_step = rounds, rank, start_step

    def chunk_indices(self, step: int, round_idx: int) -> np.ndarray:
        chunk = self.rank * self.rounds + round_idx
        return self.order.indices(step * self.batch_size + chunk * self.batch_gpu, self.batch_gpu)

    def __iter__(self):
        step = self.start_step
        while True:
            for r in range(self.rounds):
                yield self.chunk_indices(step, r).tolist()
            step += 1
