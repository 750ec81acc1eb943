"""mislas_hf.sampling.ClassAwareSampler: class balance, the 4-in-a-row pattern, per-class cycles, determinism,
sharding over ranks (real gloo processes) and the Accelerate/Trainer path (BatchSamplerShard, set_epoch)."""

import collections
import json
import os
import socket

import datasets
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mislas_hf.data import dataset_labels, make_long_tailed
from mislas_hf.sampling import ClassAwareSampler

SMALL_LABELS = [0] * 40 + [1] * 25 + [2] * 10 + [3] * 6  # 81 images: odd, so sharding over 2 ranks pads by one
ACCELERATE_LABELS = [2] * 30 + [0] * 20 + [3] * 10 + [1] * 4  # 64 images: 8 batches of 8


@pytest.fixture(scope="module")
def cifar10_lt_labels(cifar10_dir) -> list[int]:
    """Labels of the real CIFAR-10-LT (imbalance factor 100): 12,406 images."""
    train = datasets.load_dataset(str(cifar10_dir), split="train")
    return dataset_labels(make_long_tailed(train, 100))


def check_class_aware_stream(stream, labels, samples_per_class=4):
    """Assert the reference's structure: groups of `samples_per_class` share a class, classes come in shuffled
    cycles over all classes, and each class's images come in shuffled cycles (no repeat before all are drawn)."""
    members = collections.defaultdict(list)
    for index, label in enumerate(labels):
        members[label].append(index)
    num_classes = len(members)
    group_classes = []
    for start in range(0, len(stream), samples_per_class):
        group = {labels[i] for i in stream[start : start + samples_per_class]}
        assert len(group) == 1, f"group at {start} mixes classes {group}"
        group_classes.append(group.pop())
    for start in range(0, len(group_classes) - num_classes + 1, num_classes):
        assert sorted(group_classes[start : start + num_classes]) == sorted(members)
    drawn = collections.defaultdict(list)
    for index in stream:
        drawn[labels[index]].append(index)
    for label, sequence in drawn.items():
        size = len(members[label])
        for start in range(0, len(sequence), size):
            cycle = sequence[start : start + size]
            assert len(set(cycle)) == len(cycle) and set(cycle) <= set(members[label])
    return group_classes


@pytest.mark.slow
def test_one_epoch_on_cifar10_lt_is_class_balanced(cifar10_lt_labels):
    labels = cifar10_lt_labels
    sampler = ClassAwareSampler(labels)
    stream = list(sampler)
    assert len(stream) == len(sampler) == len(labels) == 12406
    counts = collections.Counter(labels[i] for i in stream)
    uniform = len(labels) / 10
    assert all(abs(counts[c] - uniform) <= 0.1 * uniform for c in range(10)), counts
    check_class_aware_stream(stream, labels)
    # the few class (50 images) is drawn about 1240 times: each of its images ~25 times, in full cycles
    few = collections.Counter(i for i in stream if labels[i] == 9)
    assert len(few) == 50 and max(few.values()) - min(few.values()) <= 1


def reference_class_aware_stream(labels, length, samples_per_class, generator):
    """The reference's class-aware stream (Decoupling / MiSLAS `ClassAwareSampler` over `RandomCycleIter`s),
    re-implemented from its description with torch's RNG in place of Python's `random.shuffle`:

    - a random cycle over a list starts *before* its first item, so its very first draw shuffles the list, and it
      reshuffles each time it has handed out every item (one pass = one fresh random order);
    - one cycle runs over the class ids, one over each class's dataset indices; each group is `samples_per_class`
      consecutive draws from the cycle of the class drawn next; the stream stops after `length` indices.

    A shuffle of `n` items takes `torch.randperm(n, generator=generator)` and reorders the current list by it, and
    the draws happen lazily in stream order (the class cycle's shuffle before the first class's images'), which is
    the package's documented RNG use (one `torch.Generator` seeded with `seed + epoch` for the whole epoch)."""

    class Cycle:
        def __init__(self, items):
            self.items, self.next_position = list(items), len(items)

        def draw(self):
            if self.next_position == len(self.items):
                self.items = [self.items[k] for k in torch.randperm(len(self.items), generator=generator).tolist()]
                self.next_position = 0
            self.next_position += 1
            return self.items[self.next_position - 1]

    classes = sorted(set(labels))
    class_cycle = Cycle(range(len(classes)))
    image_cycles = [Cycle([i for i, label in enumerate(labels) if label == c]) for c in classes]
    stream = []
    while len(stream) < length:
        images = image_cycles[class_cycle.draw()]
        stream += [images.draw() for _ in range(samples_per_class)]
    return stream[:length]


@pytest.mark.parametrize("samples_per_class", [4, 3])
def test_stream_is_the_reference_stream_for_epochs_0_and_1(samples_per_class):
    sampler = ClassAwareSampler(SMALL_LABELS, samples_per_class=samples_per_class, seed=11)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(11 + epoch)
        expected = reference_class_aware_stream(SMALL_LABELS, len(SMALL_LABELS), samples_per_class, generator)
        assert list(sampler) == expected, f"epoch {epoch}"
    # and the first groups are really shuffled: not class 0's first images in index order
    assert list(sampler)[:4] != [0, 1, 2, 3]


@pytest.mark.slow
def test_epochs_on_cifar10_lt_cover_each_class_with_reshuffled_passes(cifar10_lt_labels):
    """What a class-aware stream whose cycles skip the first shuffle gets wrong: it would draw class 0's first
    ~1,240 images (of 5,000) in index order, the same ones every epoch."""
    labels = cifar10_lt_labels
    class0 = [i for i, label in enumerate(labels) if label == 0]
    class9 = [i for i, label in enumerate(labels) if label == 9]
    assert len(class0) == 5000 and len(class9) == 50
    sampler = ClassAwareSampler(labels, seed=0)
    drawn = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        stream = list(sampler)
        head = [class0.index(i) for i in stream if labels[i] == 0]  # rank of each drawn image inside class 0
        # ~1,240 draws, all distinct (one partial pass of 5,000), spread over the whole class
        assert 1100 < len(head) == len(set(head)) < 1400
        assert max(head) > 4000 and min(head) < 1000
        assert sum(rank < 2500 for rank in head) == pytest.approx(len(head) / 2, rel=0.15)
        drawn[epoch] = set(head)
        # class 9 (50 images) is drawn in ~24 full passes: each a fresh random order
        tail = [i for i in stream if labels[i] == 9]
        passes = [tuple(tail[k : k + 50]) for k in range(0, len(tail) - 49, 50)]
        assert len(passes) >= 20 and all(sorted(p) == class9 for p in passes)
        assert len(set(passes)) == len(passes) and tuple(class9) not in passes
        # the class cycle: each pass over the 10 classes is a fresh order too
        group_classes = [labels[i] for i in stream[::4]]
        class_passes = [tuple(group_classes[k : k + 10]) for k in range(0, len(group_classes) - 9, 10)]
        assert tuple(range(10)) not in class_passes[:3] and len(set(class_passes)) > len(class_passes) // 2
    # two epochs draw different class-0 images: about a quarter of one epoch's draws recur in the other
    overlap = len(drawn[0] & drawn[1]) / len(drawn[0])
    assert 0.15 < overlap < 0.35


def test_stream_structure_for_other_group_sizes():
    for samples_per_class in (1, 3, 4):
        sampler = ClassAwareSampler(SMALL_LABELS, samples_per_class=samples_per_class, seed=5)
        groups = check_class_aware_stream(list(sampler), SMALL_LABELS, samples_per_class)
        assert len(groups) == -(-len(SMALL_LABELS) // samples_per_class)


def test_same_seed_and_epoch_give_the_same_stream():
    sampler = ClassAwareSampler(SMALL_LABELS, seed=3)
    first = list(sampler)
    assert list(sampler) == first == list(ClassAwareSampler(SMALL_LABELS, seed=3))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert list(ClassAwareSampler(SMALL_LABELS, seed=4)) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_sharding_splits_one_global_stream():
    global_stream = list(ClassAwareSampler(SMALL_LABELS, seed=1))
    for replicas in (2, 3, 4):
        shards = [list(ClassAwareSampler(SMALL_LABELS, seed=1, num_replicas=replicas, rank=r)) for r in range(replicas)]
        per_rank = -(-len(SMALL_LABELS) // replicas)
        assert all(len(shard) == per_rank for shard in shards)
        assert len(ClassAwareSampler(SMALL_LABELS, num_replicas=replicas, rank=0)) == per_rank
        interleaved = [shard[i] for i in range(per_rank) for shard in shards]
        assert interleaved[: len(SMALL_LABELS)] == global_stream
        check_class_aware_stream(interleaved, SMALL_LABELS)  # the padding continues the stream


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="labels is empty"):
        ClassAwareSampler([])
    with pytest.raises(ValueError, match="samples_per_class=0"):
        ClassAwareSampler([0, 1], samples_per_class=0)
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, 2\)"):
        ClassAwareSampler([0, 1], num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="rank=None"):
        ClassAwareSampler([0, 1], num_replicas=2)
    with pytest.raises(ValueError, match="without num_replicas"):
        ClassAwareSampler([0, 1], rank=1)
    with pytest.raises(ValueError, match="num_replicas=0"):
        ClassAwareSampler([0, 1], num_replicas=0, rank=0)


def test_no_attribute_named_generator():
    # Accelerate synchronises a sampler's `generator` attribute across processes; this sampler has none.
    assert not hasattr(ClassAwareSampler([0, 1]), "generator")


# ------------------------------------------------------------------------------------------ real multi-process runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        shard = ClassAwareSampler(SMALL_LABELS, seed=2, num_replicas=2, rank=rank)
        unsharded = ClassAwareSampler(SMALL_LABELS, seed=2)  # num_replicas=None: no auto-sharding under DDP
        shard.set_epoch(1)
        result = {"length": len(shard), "shard": list(shard), "unsharded": list(unsharded)}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(result, handle)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_share_the_global_stream(tmp_path):
    mp.spawn(_gloo_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    reference = ClassAwareSampler(SMALL_LABELS, seed=2)
    assert all(rank["unsharded"] == list(reference) for rank in ranks)
    reference.set_epoch(1)
    global_stream = list(reference)
    shard0, shard1 = ranks[0]["shard"], ranks[1]["shard"]
    assert ranks[0]["length"] == ranks[1]["length"] == len(shard0) == len(shard1) == 41
    interleaved = [index for pair in zip(shard0, shard1) for index in pair]
    assert interleaved[:81] == global_stream
    check_class_aware_stream(interleaved, SMALL_LABELS)


def _accelerate_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset

    accelerator = Accelerator(cpu=True)
    sampler = ClassAwareSampler(ACCELERATE_LABELS, seed=7)
    loader = DataLoader(TensorDataset(torch.arange(len(ACCELERATE_LABELS))), batch_size=8, sampler=sampler)
    loader = accelerator.prepare(loader)
    epochs = [[batch[0].tolist() for batch in loader] for _ in range(2)]  # two passes: Accelerate calls set_epoch
    result = {
        "processes": accelerator.num_processes,
        "batch_sampler": type(loader.batch_sampler).__name__,
        "epochs": epochs,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    accelerator.wait_for_everyone()
    accelerator.end_training()


@pytest.mark.slow
def test_accelerate_prepared_loader_shards_batches_once(tmp_path):
    mp.spawn(_accelerate_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(rank["processes"] == 2 and rank["batch_sampler"] == "BatchSamplerShard" for rank in ranks)
    sampler = ClassAwareSampler(ACCELERATE_LABELS, seed=7)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        stream = list(sampler)
        global_batches = [stream[i : i + 8] for i in range(0, len(stream), 8)]
        batches0, batches1 = ranks[0]["epochs"][epoch], ranks[1]["epochs"][epoch]
        assert len(batches0) == len(batches1) == 4 and batches0 != batches1
        # rank r gets global batches r, r + 2, ...: together exactly the global stream, nothing twice
        assert batches0 == global_batches[0::2] and batches1 == global_batches[1::2]
        for batch in batches0 + batches1:
            for group in (batch[:4], batch[4:]):
                assert len({ACCELERATE_LABELS[i] for i in group}) == 1
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]
