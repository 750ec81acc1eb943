"""Class-balanced sampling for Stage-2 of MiSLAS (classifier re-training on class-balanced data).

`ClassAwareSampler` is the class-aware sampler of Decoupling (Kang et al., ICLR 2020) that MiSLAS uses in Stage-2
(reference dvlab-research/MiSLAS `datasets/sampler.py`, `ClassAwareSampler` with `num_samples_cls=4`), made
deterministic per (seed, epoch) and optionally sharded across ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class _RandomCycle:
    """Endless cycle over `items`, reshuffled with `rng` at the start of every pass (reference `RandomCycleIter`)."""

    def __init__(self, items: Sequence[int], rng: torch.Generator):
        self.items = list(items)
        self.rng = rng
        self.position = len(self.items)  # the first draw shuffles, as in the reference

    def next(self) -> int:
        """The next item; a new random order once every item of the current pass has been drawn."""
        if self.position == len(self.items):
            order = torch.randperm(len(self.items), generator=self.rng).tolist()
            self.items = [self.items[i] for i in order]
            self.position = 0
        item = self.items[self.position]
        self.position += 1
        return item


class ClassAwareSampler(Sampler[int]):
    """Class-balanced sampler: classes are drawn uniformly, `samples_per_class` images in a row per draw.

    As in the reference: a class is picked by cycling through a shuffled list of the classes present in `labels`
    (reshuffled each time the cycle ends), then `samples_per_class` consecutive indices are taken from that class's
    own cycle over its images (reshuffled each time it ends), so no image of a class repeats before all of them have
    been drawn. An epoch draws `len(labels)` indices in total, the reference's effective epoch length (its Stage-2
    loop stops after ceil(len(dataset) / batch_size) batches).

    All randomness comes from a `torch.Generator` seeded with `seed + epoch`; call `set_epoch` every epoch
    (Accelerate's prepared DataLoader does so with its pass count, and so does the Trainer).

    Sharding: with `num_replicas` set, the global stream is continued up to a multiple of `num_replicas` and rank
    `r` gets `stream[r::num_replicas]`; all ranks have the same length (`__len__`) and together draw the global
    stream. `num_replicas=None` (the default) means one global stream even when `torch.distributed` is initialised:
    leave it so under the Trainer / `accelerate.prepare`, which shard the batches themselves (`BatchSamplerShard`),
    so that sharding here as well would shard twice. Pass `num_replicas`/`rank` only for a plain DDP DataLoader.
    """

    def __init__(
        self,
        labels: Sequence[int],
        samples_per_class: int = 4,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        labels = [int(label) for label in labels]
        if not labels:
            raise ValueError("labels is empty: ClassAwareSampler needs the label of every training image")
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class={samples_per_class} must be >= 1 (the reference uses 4)")
        if num_replicas is None:
            if rank not in (None, 0):
                raise ValueError(f"rank={rank} given without num_replicas: pass both to shard, or neither")
            num_replicas, rank = 1, 0
        elif num_replicas < 1:
            raise ValueError(f"num_replicas={num_replicas} must be >= 1")
        elif rank is None or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, {num_replicas}) for num_replicas={num_replicas}")
        indices_of: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            indices_of.setdefault(label, []).append(index)
        self.class_indices = [indices_of[label] for label in sorted(indices_of)]
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank
        self.num_samples = math.ceil(len(labels) / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose stream `__iter__` yields (the generator is seeded with `seed + epoch`)."""
        self.epoch = epoch

    def global_stream(self) -> list[int]:
        """The stream of all ranks for the current epoch: `total_size` dataset indices."""
        rng = torch.Generator().manual_seed(self.seed + self.epoch)
        class_cycle = _RandomCycle(range(len(self.class_indices)), rng)
        image_cycles = [_RandomCycle(indices, rng) for indices in self.class_indices]
        stream: list[int] = []
        while len(stream) < self.total_size:
            images = image_cycles[class_cycle.next()]
            stream.extend(images.next() for _ in range(self.samples_per_class))
        return stream[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        """This rank's share of the current epoch's global stream."""
        return iter(self.global_stream()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        """Number of indices this rank draws per epoch."""
        return self.num_samples
