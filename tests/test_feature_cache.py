"""Feature-cached stages (mislas_hf.feature_cache, `--cached_feature_views`) on real CIFAR-10-LT images with the
recipe's own pipeline and a ResNet-32: the head a cached stage 2, or a cached stage-1 linear probe, trains equals the
uncached one when both see the same features, the cache holds what the backbone computes, it is reused and rebuilt as
its key says (one cache for both stages of a linear probe), K views are K draws of the training augmentation, and
what cannot be cached is refused, saying why."""

import dataclasses
import importlib.util
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mislas_hf import MislasForImageClassification, feature_cache
from mislas_hf.data import CIFAR_CROP_PADDING, CIFAR_MEAN, CIFAR_STD, augment_cifar_batch, dataset_labels
from mislas_hf.feature_cache import (
    FEATURE_CACHE_DIRNAME,
    CachedFeatureTransform,
    check_backbone_cacheable,
    load_or_build_feature_cache,
    cached_feature_training_set,
)
from mislas_hf.scripts.arguments import parse_arguments
from mislas_hf.scripts.data_setup import load_splits
from mislas_hf.scripts.model_setup import plan_model
from mislas_hf.scripts.train import train
from mislas_hf.trainer import MislasTrainer
from mislas_hf.training_args import MislasTrainingArguments

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_TRAIN_SAMPLES, BATCH = 120, 16  # a class-proportional subset of 117 images: 8 steps per epoch


def recipe_flags(cifar10_dir, output_dir, *extra):
    return [
        "--config", str(REPO_ROOT / "recipes/configs/cifar10_lt_if100.yaml"),
        "--dataset_name", str(cifar10_dir),
        "--output_dir", str(output_dir),
        "--max_train_samples", str(MAX_TRAIN_SAMPLES),
        "--max_eval_samples", "50",
        "--per_device_train_batch_size", str(BATCH),
        "--per_device_eval_batch_size", "50",
        "--dataloader_num_workers", "0",
        "--save_strategy", "no",
        "--logging_steps", "1",
        "--bf16", "false",
        *extra,
    ]


@pytest.fixture(scope="module")
def splits(cifar10_dir, tmp_path_factory):
    """The recipe's CIFAR-10-LT splits (in-memory images: the training split yields raw uint8 images, augmented per
    batch by `augment_cifar_batch`; the test split normalised float32 images), its stage-2 arguments and the
    benchmark's preprocessing."""
    model_args, data_args, args, _ = parse_arguments(recipe_flags(cifar10_dir, tmp_path_factory.mktemp("run")))
    benchmark, counts, train_set, _, test = load_splits(data_args, args, plan_model(model_args))
    return train_set, test, counts, args, benchmark.preprocessing


def stage2_trainer(tiny_cifar10_model, splits, output_dir, train_dataset=None, model=None, **overrides):
    """A stage-2 `MislasTrainer` of the recipe on `train_dataset` (default: the training images) for a fresh seeded
    ResNet-32 (or `model`), shift_bn off, float32 (`overrides`: other arguments, e.g. stage 1's)."""
    train_set, _, counts, args, _ = splits
    stage_args = dataclasses.replace(
        args, **{"stage": "2", "num_train_epochs": 10, "output_dir": str(output_dir), "shift_bn": False, **overrides}
    )
    if model is None:
        model = tiny_cifar10_model()
    model.config.class_counts = counts
    return MislasTrainer(
        model=model,
        args=stage_args,
        train_dataset=train_set if train_dataset is None else train_dataset,
        batch_augmentation=augment_cifar_batch,
    )


def record_training_batches(monkeypatch):
    """The labels of every training-mode `compute_loss` call, in order."""
    batches = []
    compute_loss = MislasTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            batches.append(inputs["labels"].tolist())
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(MislasTrainer, "compute_loss", recording)
    return batches


def count_extractions(monkeypatch):
    """How many times `load_or_build_feature_cache` extracts features (a list with one entry per extraction)."""
    calls = []
    extract = feature_cache.extract_pooled_features

    def counting(*args, **kwargs):
        calls.append(args[2])  # views
        return extract(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "extract_pooled_features", counting)
    return calls


def head_parameters(model) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.classifier.state_dict().items()}


def test_cached_stage2_trains_the_head_of_the_uncached_run_on_the_same_features(
    tiny_cifar10_model, splits, tmp_path, monkeypatch
):
    """Uncached: stage 2 on the training images through the evaluation transform. Cached (K = 1): the same model,
    seed and sampler on the cached features. 10 steps (over an epoch boundary): the same batches, the same head."""
    train_set, test, _, _, preprocessing = splits
    batches = record_training_batches(monkeypatch)
    evaluation_view = train_set.with_transform(feature_cache.dataset_transform(test))
    uncached = stage2_trainer(tiny_cifar10_model, splits, tmp_path / "uncached", evaluation_view, max_steps=10)
    initial = head_parameters(uncached.model)
    backbone = {name: tensor.clone() for name, tensor in uncached.model.base_model.state_dict().items()}
    uncached.train()
    uncached_batches = list(batches)
    batches.clear()

    cached = stage2_trainer(tiny_cifar10_model, splits, tmp_path / "cached", cached_feature_views=1, max_steps=10)
    cached.train_dataset = cached_feature_training_set(cached, test, preprocessing, tmp_path / "cache")
    cached.train()

    assert len(uncached_batches) == 10 and batches == uncached_batches  # one class-aware stream, seed 0
    trained = head_parameters(cached.model)
    for name, value in head_parameters(uncached.model).items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-5, msg=name)
    assert (trained["scale"] - initial["scale"]).abs().max() > 1e-3  # the head did learn: the check is not vacuous
    assert (trained["delta_weight"] - initial["delta_weight"]).abs().max() > 1e-3
    for name, value in cached.model.base_model.state_dict().items():
        assert torch.equal(value, backbone[name]), name  # the backbone, BN statistics included, never moved


def frozen_resnet32(tiny_cifar10_model):
    """The seeded ResNet-32 of `tiny_cifar10_model` with `freeze_backbone`: a linear probe's stage-1 model."""
    config = tiny_cifar10_model().config
    config.freeze_backbone = True
    torch.manual_seed(0)
    return MislasForImageClassification(config)


def test_cached_linear_probe_trains_the_head_of_the_uncached_one_on_the_same_features(
    tiny_cifar10_model, splits, tmp_path, monkeypatch
):
    """Stage 1 with a frozen backbone and no mixup (the linear probe), uncached on the training images through the
    evaluation transform, and cached (K = 1) from the same model and seed: the same instance-stream batches over an
    epoch boundary (117 images, 8 steps per epoch), the same W and b to 1e-5, and the backbone never moves."""
    train_set, test, _, _, preprocessing = splits
    batches = record_training_batches(monkeypatch)
    evaluation_view = train_set.with_transform(feature_cache.dataset_transform(test))
    probe = {"stage": "1", "mixup_alpha": 0.0, "max_steps": 10}
    uncached = stage2_trainer(
        tiny_cifar10_model, splits, tmp_path / "uncached", evaluation_view, frozen_resnet32(tiny_cifar10_model), **probe
    )
    initial = head_parameters(uncached.model)
    backbone = {name: tensor.clone() for name, tensor in uncached.model.base_model.state_dict().items()}
    uncached.train()
    uncached_batches = list(batches)
    batches.clear()

    cached = stage2_trainer(
        tiny_cifar10_model, splits, tmp_path / "cached", model=frozen_resnet32(tiny_cifar10_model),
        cached_feature_views=1, **probe
    )
    cached.train_dataset = cached_feature_training_set(cached, test, preprocessing, tmp_path / "cache")
    assert len(cached.train_dataset) == len(train_set) == 117
    cached.train()

    assert len(uncached_batches) == 10 and batches == uncached_batches  # one random instance stream, seed 0
    assert sorted(sum(uncached_batches[:8], [])) == sorted(dataset_labels(train_set))  # epoch 1: every image once
    trained = head_parameters(cached.model)
    for name, value in head_parameters(uncached.model).items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-5, msg=name)
    for name in ("weight", "bias"):  # stage 1 trains W and b: the check is not vacuous
        assert (trained[name] - initial[name]).abs().max() > 1e-3, name
    for name in ("scale", "delta_weight"):  # and leaves s and ΔW at their initial values
        assert torch.equal(trained[name], initial[name]), name
    for name, value in cached.model.base_model.state_dict().items():
        assert torch.equal(value, backbone[name]), name


def test_cache_holds_the_backbone_features_and_is_reused_until_its_key_changes(
    tiny_cifar10_model, splits, tmp_path, monkeypatch, caplog
):
    train_set, test, _, _, preprocessing = splits
    extractions = count_extractions(monkeypatch)
    root = tmp_path / FEATURE_CACHE_DIRNAME
    evaluation_view = train_set.with_transform(feature_cache.dataset_transform(test))

    def build(model=None, images=evaluation_view, preprocessing=preprocessing):
        trainer = stage2_trainer(tiny_cifar10_model, splits, tmp_path / "out", model=model, cached_feature_views=1)
        with caplog.at_level(logging.INFO, logger="mislas_hf.feature_cache"):
            caplog.clear()
            cache = load_or_build_feature_cache(trainer, images, root, preprocessing, views=1)
        return trainer, cache, caplog.text

    trainer, cache, log = build()
    assert extractions == [1] and "no cache yet" in log
    folders = sorted(path.name for path in root.iterdir())
    assert len(folders) == 1 and len(cache) == len(train_set) == 117
    # what the frozen backbone computes on each training image through the evaluation transform, in row order
    model = trainer.model.eval()
    pixel_values = torch.stack([row["pixel_values"] for row in evaluation_view])
    with torch.no_grad():
        expected = model.base_model(pixel_values=pixel_values).pooler_output
    features = torch.from_numpy(cache.with_format("numpy")[:]["pooled_features"])
    assert features.shape == (117, 1, 64)
    torch.testing.assert_close(features[:, 0], expected, rtol=0, atol=1e-5)
    assert cache["label"][:] == dataset_labels(train_set) and cache["image_index"][:] == list(range(117))
    key = json.loads((root / folders[0] / feature_cache.KEY_FILENAME).read_text())
    assert key["views"] == 1 and key["transform"] == "evaluation" and key["precision"] == "no"

    _, _, log = build()  # a rerun: same model, images and transform
    assert extractions == [1] and f"cached pooled features in {root / folders[0]}" in log

    changed_model = tiny_cifar10_model()
    with torch.no_grad():
        changed_model.base_model.embedder.conv1.weight[0, 0, 0, 0] += 1e-3
    _, _, log = build(model=changed_model)
    assert extractions == [1, 1] and "(the backbone's weights changed since" in log

    _, _, log = build(preprocessing=dataclasses.replace(preprocessing, mean=(0.5, 0.5, 0.5)))
    assert extractions == [1, 1, 1] and "the backbone's weights and the preprocessing changed" in log  # vs newest

    _, _, log = build(images=evaluation_view.select(range(116)))
    assert extractions == [1, 1, 1, 1] and "(the training images and the preprocessing changed" in log
    assert len(list(root.iterdir())) == 4  # one folder per key; the rerun added none


def augmented_versions(image: torch.Tensor) -> torch.Tensor:
    """Every image `RandomCrop(32, padding=4)` + `RandomHorizontalFlip` can make of a uint8 `(3, 32, 32)` image (9 x 9
    offsets x 2 flips), normalised with CIFAR's mean/std: `[162, 3, 32, 32]` float32."""
    pad = CIFAR_CROP_PADDING
    padded = F.pad(image.float() / 255, (pad, pad, pad, pad))
    crops = [padded[:, top : top + 32, left : left + 32] for top in range(2 * pad + 1) for left in range(2 * pad + 1)]
    crops += [crop.flip(-1) for crop in crops]
    mean, std = torch.tensor(CIFAR_MEAN)[:, None, None], torch.tensor(CIFAR_STD)[:, None, None]
    return (torch.stack(crops) - mean) / std


def test_two_views_are_two_draws_of_the_training_augmentation(tiny_cifar10_model, splits, tmp_path):
    train_set, test, _, _, preprocessing = splits
    trainer = stage2_trainer(tiny_cifar10_model, splits, tmp_path / "out", cached_feature_views=2, max_steps=-1,
                             num_train_epochs=1)
    trainer.train_dataset = cached_feature_training_set(trainer, test, preprocessing, tmp_path / "cache")
    cache = trainer.train_dataset.with_format("numpy")[:]
    features = torch.from_numpy(cache["pooled_features"])
    assert features.shape == (117, 2, 64)  # one row per image, two views each
    model = trainer.model.eval()
    for row in (0, 116):
        with torch.no_grad():
            candidates = model.base_model(pixel_values=augmented_versions(train_set[row]["pixel_values"])).pooler_output
        for view in range(2):
            # one of the 162 (features of size ~100-1000: 1e-3 is float32 rounding; other crops differ by > 1)
            assert (candidates - features[row, view]).abs().amax(-1).min() < 1e-3, (row, view)
    assert not torch.allclose(features[:, 0], features[:, 1], atol=1e-3)  # two draws, not one view twice
    # an epoch draws as many images as the uncached one: ceil(117 / 16) = 8 steps
    trainer.train()
    assert trainer.state.global_step == math.ceil(117 / BATCH) == 8

    # each draw of an image takes one of its views, uniformly
    transform = CachedFeatureTransform(features, "label")
    torch.manual_seed(0)
    drawn = torch.stack(transform({"image_index": [3] * 400, "label": [0] * 400})["pooled_features"])
    is_view_0 = (drawn == features[3, 0]).all(-1)
    assert torch.equal(is_view_0 | (drawn == features[3, 1]).all(-1), torch.ones(400, dtype=torch.bool))
    assert 150 <= int(is_view_0.sum()) <= 250  # Binomial(400, 1/2): 5 standard deviations either side


def test_what_cannot_be_cached_is_refused(tiny_cifar10_model, splits, tmp_path):
    with pytest.raises(ValueError, match="shift_bn"):
        MislasTrainingArguments(output_dir=str(tmp_path), cached_feature_views=1, shift_bn=True, use_cpu=True)
    with pytest.raises(ValueError, match="cached_feature_views=0 must be >= 1"):
        MislasTrainingArguments(output_dir=str(tmp_path), cached_feature_views=0, shift_bn=False, use_cpu=True)
    for stage in ("1", "both"):  # mixup trains on blended images, whose features the cache does not hold
        with pytest.raises(ValueError, match=r"stage 1 with mixup_alpha=0.2 trains on blended images.*--mixup_alpha 0"):
            MislasTrainingArguments(output_dir=str(tmp_path), stage=stage, cached_feature_views=1, shift_bn=False,
                                    mixup_alpha=0.2, use_cpu=True)
    for stage, mixup_alpha in (("2", 1.0), ("1", 0.0), ("both", 0.0)):  # accepted
        MislasTrainingArguments(output_dir=str(tmp_path), stage=stage, cached_feature_views=1, shift_bn=False,
                                mixup_alpha=mixup_alpha, use_cpu=True)
    stage1_model = tiny_cifar10_model()  # a backbone that trains (stage 1 without freeze_backbone)
    with pytest.raises(ValueError, match=r"backbone parameters train \(e\.g\. embedder\.conv1\.weight\).*"
                                         r"--freeze_backbone true"):
        check_backbone_cacheable(stage1_model)
    check_backbone_cacheable(frozen_resnet32(tiny_cifar10_model))  # the linear probe's: no error
    shifted = tiny_cifar10_model()
    shifted.prepare_stage2(shift_bn=True)
    with pytest.raises(ValueError, match=r"stays in training mode.*pass --shift_bn false"):
        check_backbone_cacheable(shifted)
    frozen = tiny_cifar10_model()
    frozen.prepare_stage2(shift_bn=False)
    check_backbone_cacheable(frozen)  # no error
    pixel_values = torch.zeros(1, 3, 32, 32)
    for inputs in ({}, {"pixel_values": pixel_values, "pooled_features": torch.zeros(1, 64)}):
        with pytest.raises(ValueError, match="either pixel_values"):
            frozen(**inputs)


def test_head_on_pooled_features_is_the_head_of_the_image_forward(tiny_cifar10_model):
    """`forward(pooled_features=x)` is Eq. (4) on x, divided by the temperature, plus the logit bias, as
    `forward(pixel_values)` computes it after the backbone."""
    model = tiny_cifar10_model().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.classifier.scale.copy_(0.5 + torch.rand(10, generator=generator))
        model.classifier.delta_weight.copy_(0.1 * torch.randn(10, 64, generator=generator))
    model.config.temperature = 1.7
    model.config.logit_bias = torch.randn(10, generator=generator).tolist()
    pixel_values = torch.randn(4, 3, 32, 32, generator=generator)
    with torch.no_grad():
        x = model.base_model(pixel_values=pixel_values).pooler_output
        from_features = model(pooled_features=x).logits
        from_images = model(pixel_values=pixel_values).logits
    head = model.classifier
    by_hand = head.scale * (x @ (head.weight + head.delta_weight).T + head.bias) / 1.7
    by_hand = by_hand + torch.tensor(model.config.logit_bias)
    torch.testing.assert_close(from_features, by_hand.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(from_images, from_features, rtol=0, atol=1e-6)


def test_recipe_trains_stage2_from_the_cache_and_saves_a_full_model(
    tiny_cifar10_model, splits, cifar10_dir, tmp_path, monkeypatch, caplog
):
    """recipes/train.py --stage 2 --cached_feature_views 1: the cache under OUTPUT_DIR/feature_cache/, outside the
    stage-2 folder; that folder is the stage-1 backbone with a trained head, evaluated on images; a rerun reuses the
    cache."""
    extractions = count_extractions(monkeypatch)
    stage1 = tiny_cifar10_model()
    stage1.save_pretrained(tmp_path / "stage1")
    output_dir = tmp_path / "out"
    flags = recipe_flags(cifar10_dir, output_dir, "--stage", "2", "--model_name_or_path", str(tmp_path / "stage1"),
                         "--cached_feature_views", "1", "--shift_bn", "false", "--max_steps", "3")
    results = train(*parse_arguments(flags)[:3])
    caches = list((output_dir / FEATURE_CACHE_DIRNAME).iterdir())
    assert extractions == [1] and len(caches) == 1 and (caches[0] / "dataset_info.json").is_file()
    assert {path.name for path in (output_dir / "stage2").iterdir()}.isdisjoint({FEATURE_CACHE_DIRNAME})
    saved, start = load_file(output_dir / "stage2/model.safetensors"), load_file(tmp_path / "stage1/model.safetensors")
    assert saved.keys() == start.keys()
    for name, value in start.items():
        if name.startswith("mislas."):
            assert torch.equal(saved[name], value), name
    assert not torch.equal(saved["classifier.scale"], start["classifier.scale"])
    # the saved folder classifies images: its accuracy on the 50 test images, computed here, is the reported one
    test = splits[1]
    model = MislasForImageClassification.from_pretrained(output_dir / "stage2").eval()
    with torch.no_grad():
        predicted = model(pixel_values=torch.stack([row["pixel_values"] for row in test])).logits.argmax(-1)
    accuracy = (predicted == torch.tensor(dataset_labels(test))).double().mean().item()
    assert results["stage2"]["eval_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    with caplog.at_level(logging.INFO, logger="mislas_hf.feature_cache"):
        train(*parse_arguments(flags)[:3])
    assert extractions == [1] and "cached pooled features" in caplog.text
    assert list((output_dir / FEATURE_CACHE_DIRNAME).iterdir()) == caches


def test_runs_given_one_feature_cache_dir_share_its_cache(tiny_cifar10_model, cifar10_dir, tmp_path, monkeypatch):
    """--feature_cache_dir: a cRT and a MiSLAS stage 2 of one stage-1 model, in two output folders, extract the
    features once, into that folder and not under either OUTPUT_DIR."""
    extractions = count_extractions(monkeypatch)
    tiny_cifar10_model().save_pretrained(tmp_path / "stage1")
    shared = tmp_path / "features"
    for head_mode in ("crt", "mislas"):
        flags = recipe_flags(cifar10_dir, tmp_path / head_mode, "--stage", "2", "--model_name_or_path",
                             str(tmp_path / "stage1"), "--cached_feature_views", "1", "--shift_bn", "false",
                             "--max_steps", "2", "--head_mode", head_mode, "--feature_cache_dir", str(shared))
        train(*parse_arguments(flags)[:3])
        assert not (tmp_path / head_mode / FEATURE_CACHE_DIRNAME).exists()
    assert extractions == [1]
    caches = list(shared.iterdir())
    assert len(caches) == 1 and (caches[0] / "dataset_info.json").is_file()


def test_feature_cache_dir_without_cached_features_is_refused(cifar10_dir, tmp_path):
    flags = recipe_flags(cifar10_dir, tmp_path / "out", "--feature_cache_dir", str(tmp_path / "features"))
    with pytest.raises(ValueError, match=r"feature_cache_dir=.* but cached_feature_views is unset.*--cached_feature_vi"):
        parse_arguments(flags)
    assert list(tmp_path.iterdir()) == []


def test_recipe_linear_probe_trains_both_stages_from_one_cache(
    tiny_vision_checkpoint, cifar10_dir, tmp_path, monkeypatch
):
    """recipes/train.py --stage both --freeze_backbone true --mixup_alpha 0 --cached_feature_views 1 on CIFAR-10-LT
    from a pretrained EfficientNet checkpoint: its images normalised as the checkpoint's processor says; stage 1 (the
    linear probe) extracts the features once and stage 2 (same frozen backbone, images and transform) reuses them;
    both saved folders keep the checkpoint's backbone, each with its trained head."""
    from transformers import AutoModelForImageClassification

    extractions = count_extractions(monkeypatch)
    checkpoint = tiny_vision_checkpoint("efficientnet")
    output_dir = tmp_path / "probe"
    flags = [
        "--dataset", "cifar10-lt", "--dataset_name", str(cifar10_dir), "--output_dir", str(output_dir),
        "--model_name_or_path", str(checkpoint), "--freeze_backbone", "true", "--mixup_alpha", "0",
        "--cached_feature_views", "1", "--max_train_samples", str(MAX_TRAIN_SAMPLES), "--max_eval_samples", "50",
        "--max_steps", "3", "--per_device_train_batch_size", str(BATCH), "--per_device_eval_batch_size", "50",
        "--dataloader_num_workers", "0", "--save_strategy", "no", "--report_to", "none", "--bf16", "false",
    ]
    train(*parse_arguments(flags)[:3])
    assert extractions == [1] and len(list((output_dir / FEATURE_CACHE_DIRNAME).iterdir())) == 1
    processor = json.loads((output_dir / "stage1/preprocessor_config.json").read_text())
    # the checkpoint's normalisation, not CIFAR's: EfficientNetImageProcessor's mean 0.5 and, with include_top, its
    # std 0.5 applied twice
    assert processor["image_mean"] == [0.5] * 3 and processor["image_std"] == [0.25] * 3
    pretrained = AutoModelForImageClassification.from_pretrained(checkpoint).state_dict()
    stages = {stage: load_file(output_dir / stage / "model.safetensors") for stage in ("stage1", "stage2")}
    for stage, tensors in stages.items():
        backbone = {name.removeprefix("mislas.backbone."): value for name, value in tensors.items()
                    if name.startswith("mislas.")}
        assert len(backbone) == len([name for name in pretrained if name.startswith("efficientnet.")]) > 0, stage
        for name, value in backbone.items():
            assert torch.equal(value, pretrained[f"efficientnet.{name}"]), f"{stage} {name}"
    assert torch.equal(stages["stage1"]["classifier.weight"], stages["stage2"]["classifier.weight"])
    assert not torch.equal(stages["stage2"]["classifier.scale"], torch.ones(10))  # stage 2 trained its head


@pytest.mark.parametrize("stage", [2, 1])
def test_benchmark_times_both_variants_with_tiny_settings(stage, cifar10_dir, tiny_vision_checkpoint):
    """benchmarks/feature_cache.py's measurement as its subprocesses run it, 3 steps of 16 images: both variants
    train the same steps; the cached one's time includes its extraction. Stage 2 from a new ResNet-32 with the
    recipe config; stage 1 (the linear probe) from a pretrained checkpoint, without it."""
    spec = importlib.util.spec_from_file_location("feature_cache_benchmark", REPO_ROOT / "benchmarks/feature_cache.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    flags = ["--max_train_samples", str(MAX_TRAIN_SAMPLES), "--max_steps", "3", "--per_device_train_batch_size", "16",
             "--bf16", "false"]
    model = str(tiny_vision_checkpoint("efficientnet")) if stage == 1 else None
    config = None if stage == 1 else str(benchmark.DEFAULT_CONFIG)
    results = {
        variant: benchmark.measure({"variant": variant, "stage": stage, "views": 1, "model_name_or_path": model,
                                    "flags": flags, "config": config, "dataset_name": str(cifar10_dir)})
        for variant in ("uncached", "cached")
    }
    for variant, result in results.items():
        assert result["steps"] == 3 and result["stage"] == stage, variant
        assert result["images_per_s"] == pytest.approx(result["images"] / result["wall_s"], rel=1e-9)
        assert result["images"] == 3 * 16
    assert results["uncached"]["extraction_s"] is None
    assert 0 < results["cached"]["extraction_s"] < results["cached"]["wall_s"]
