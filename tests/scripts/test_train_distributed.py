"""Stage 2 of the real job (`mislas_hf.scripts.train.train`) in two gloo CPU processes against one process with the same global
batch: each rank trains on its shard of the one class-aware stream, evaluation reads every test image exactly once,
and the results agree."""

import json
import os
import socket
from pathlib import Path

import datasets
import pytest
import torch
import torch.multiprocessing as mp

import mislas_hf.scripts.train
from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.data import augment_cifar_batch, dataset_labels, load_benchmark, subset
from mislas_hf.scripts.arguments import parse_arguments
from mislas_hf.scripts.train import train
from mislas_hf.sampling import ClassAwareSampler

REPO_ROOT = Path(__file__).resolve().parents[2]
# --max_train_samples 65 keeps 64 images (a class-proportional subset, rounded per class): 2 full global batches of
# 32 per epoch, so step 3 reads epoch 1 and no half batch is partial
TRAIN_SAMPLES, TRAIN_IMAGES, TEST_IMAGES, GLOBAL_BATCH, STEPS = 65, 64, 100, 32, 3


def stage2_flags(cifar10_dir, output_dir, stage1_dir, processes):
    return [
        "--config", str(REPO_ROOT / "recipes/configs/cifar10_lt_if100.yaml"),  # shift_bn false: BN frozen
        "--dataset_name", str(cifar10_dir), "--output_dir", str(output_dir),
        "--stage", "2", "--model_name_or_path", str(stage1_dir),
        "--max_train_samples", str(TRAIN_SAMPLES), "--max_eval_samples", str(TEST_IMAGES), "--max_steps", str(STEPS),
        "--per_device_train_batch_size", str(GLOBAL_BATCH // processes),
        "--per_device_eval_batch_size", str(TEST_IMAGES // 4 if processes == 2 else TEST_IMAGES),
        "--learning_rate", "0.01", "--dataloader_num_workers", "0", "--save_strategy", "no", "--logging_steps", "1",
        "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
    ]


def without_random_augmentation(*run_arguments):
    """Normalisation only: each process draws its own crops and flips, so with random augmentation a 2-process run
    cannot equal a 1-process one image for image."""
    return lambda images, train: augment_cifar_batch(images, train=False)


def record_fetches(fetched: dict):
    """Record the indices of every batch the DataLoaders fetch, per dataset size (training set, test set)."""
    original = datasets.Dataset.__getitems__

    def recording(self, keys):
        fetched.setdefault(str(len(self)), []).append([int(key) for key in keys])
        return original(self, keys)

    return recording


def _stage2_worker(rank, port, flags, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2", ACCELERATE_USE_CPU="true",
    )
    torch.set_num_threads(1)
    fetched = {}
    datasets.Dataset.__getitems__ = record_fetches(fetched)
    mislas_hf.scripts.train.train_batch_augmentation = without_random_augmentation
    results = train(*parse_arguments(flags)[:3])
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"fetched": fetched, "results": results}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_stage2_shards_the_stream_and_equals_one_process(cifar10_dir, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = MislasForImageClassification(MislasConfig(num_labels=10, class_counts=[1] * 10))
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:  # BN statistics of unit-variance inputs: logits of a sane scale (else NLL ~1e7)
        bn.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(64, 3, 32, 32))
    for bn in batch_norms:
        bn.momentum = 0.1
    model.save_pretrained(tmp_path / "stage1")

    mp.spawn(_stage2_worker, args=(free_port(), stage2_flags(cifar10_dir, tmp_path / "two", tmp_path / "stage1", 2),
                                   str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    one_fetched = {}
    monkeypatch.setattr(datasets.Dataset, "__getitems__", record_fetches(one_fetched))
    monkeypatch.setattr(mislas_hf.scripts.train, "train_batch_augmentation", without_random_augmentation)
    flags = stage2_flags(cifar10_dir, tmp_path / "one", tmp_path / "stage1", 1)
    one = train(*parse_arguments(flags)[:3])

    # the global class-aware stream of the training subset, epochs 0 and 1 (seed 0 of the config)
    benchmark = load_benchmark("cifar10-lt", imbalance_factor=100, dataset_name=str(cifar10_dir))
    labels = dataset_labels(subset(benchmark.splits["train"], TRAIN_SAMPLES, seed=0))  # the run's seed
    assert len(labels) == TRAIN_IMAGES
    sampler = ClassAwareSampler(labels, seed=0)
    stream = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        stream += list(sampler)
    global_batches = [stream[k * GLOBAL_BATCH : (k + 1) * GLOBAL_BATCH] for k in range(STEPS)]
    # (Accelerate's loader fetches one batch ahead of the one in use: the batches trained on are the first STEPS)
    assert one_fetched[str(TRAIN_IMAGES)][:STEPS] == global_batches
    # rank r trains on the r-th half of every global batch
    for rank, record in enumerate(ranks):
        half = GLOBAL_BATCH // 2
        trained = record["fetched"][str(TRAIN_IMAGES)][:STEPS]
        assert trained == [batch[rank * half : (rank + 1) * half] for batch in global_batches]

    # evaluation: each rank reads a different half of the test images, each exactly once
    shares = [sorted(i for batch in record["fetched"][str(TEST_IMAGES)] for i in batch) for record in ranks]
    assert len(shares[0]) == len(shares[1]) == TEST_IMAGES // 2
    assert sorted(shares[0] + shares[1]) == list(range(TEST_IMAGES))
    assert sorted(i for batch in one_fetched[str(TEST_IMAGES)] for i in batch) == list(range(TEST_IMAGES))
    card = (tmp_path / "two/stage2/README.md").read_text()
    assert f"({TEST_IMAGES} images)" in card  # the gathered predictions: 100, not 2 x 100

    # the same metrics as one process, up to float32 reduction order (DDP averages the two half-batch gradients)
    two, one = ranks[0]["results"]["stage2"], one["stage2"]
    exact = ("eval_accuracy", "eval_top5_accuracy", "eval_many_accuracy", "eval_medium_accuracy", "eval_few_accuracy")
    close = ("eval_ece", "eval_mce", "eval_nll", "eval_loss")
    assert all(ranks[1]["results"]["stage2"][key] == two[key] for key in exact + close)
    for key in exact:
        assert two[key] == one[key], key
    for key in close:
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert 0.5 < two["eval_nll"] < 20  # a model of sane scale, not a degenerate one
