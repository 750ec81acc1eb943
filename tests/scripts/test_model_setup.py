"""A transformers ResNet checkpoint (`model_type: resnet`, the layout of microsoft/resnet-18..152) as the backbone,
loaded by repo id from a Hub-layout cache with `HF_HUB_OFFLINE=1`: the architecture is inferred, every backbone tensor
loads, the options apply or are refused naming both values, and stage 1 with learning rate 0 keeps every convolution."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file
from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.scripts.arguments import ModelArguments, parse_arguments
from mislas_hf.scripts.model_setup import build_model, plan_model
from mislas_hf.scripts.train import train

REPO_ID = "tiny-org/resnet-10-tiny"
REVISION = "fedcba9876543210fedcba9876543210fedcba98"
PROCESSOR_MEAN, PROCESSOR_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def save_in_hub_cache(cache: Path, repo_id: str, *savables) -> None:
    """Lay `savables` out as huggingface_hub stores a download: `models--ORG--NAME/snapshots/<rev>/` + `refs/main`."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    for savable in savables:
        savable.save_pretrained(folder / "snapshots" / REVISION)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A ResNet-10-shaped `ResNetForImageClassification` (random weights, BN statistics moved off their init) and an
    image processor with its own mean/std, by repo id; and the config of a model of another type."""
    cache = tmp_path_factory.mktemp("hub_cache")
    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 1, 1], layer_type="basic", num_labels=3
    )
    model = ResNetForImageClassification(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    processor = ConvNextImageProcessor(image_mean=PROCESSOR_MEAN, image_std=PROCESSOR_STD)
    save_in_hub_cache(cache, REPO_ID, model, processor)
    other = cache / "models--tiny-org--not-a-resnet"
    (other / "snapshots" / REVISION).mkdir(parents=True)
    (other / "snapshots" / REVISION / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (other / "refs").mkdir()
    (other / "refs" / "main").write_text(REVISION)
    return cache


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    return hub_cache


def checkpoint_tensors(cache: Path) -> dict:
    folder = cache / ("models--" + REPO_ID.replace("/", "--")) / "snapshots" / REVISION
    return load_file(folder / "model.safetensors")


def test_every_backbone_tensor_of_the_checkpoint_loads(offline_cache):
    plan = plan_model(ModelArguments(model_name_or_path=REPO_ID))
    assert (plan.source, plan.backbone) == ("resnet", "resnet10")
    preprocessing = plan.pretrained_preprocessing  # ConvNextImageProcessor's defaults: 384 px, no crop, bicubic
    assert (list(preprocessing.mean), list(preprocessing.std)) == (PROCESSOR_MEAN, PROCESSOR_STD)
    assert (preprocessing.image_size, preprocessing.resize_size, preprocessing.resample) == (384, 384, "bicubic")
    benchmark = type("Data", (), {"class_names": ["a", "b", "c", "d", "e"], "class_group_boundaries": None})
    data_args = type("DataArgs", (), {"many_shot_threshold": 100, "few_shot_threshold": 20})
    model = build_model(ModelArguments(model_name_or_path=REPO_ID), plan, benchmark, [9, 7, 5, 3, 1], data_args)
    ours = model.state_dict()
    checkpoint = checkpoint_tensors(offline_cache)
    backbone = {name: tensor for name, tensor in checkpoint.items() if name.startswith(("resnet.embedder.", "resnet.encoder."))}
    assert len(backbone) == 6 * (1 + 2 * 4 + 3)  # conv + 5 BN tensors: stem, 2 per block, 3 shortcuts
    for name, tensor in backbone.items():
        our_name = name.replace("resnet.embedder.", "mislas.embedder.").replace("resnet.encoder.", "mislas.encoder.resnet_encoder.")
        assert torch.equal(ours[our_name], tensor), name
    our_backbone = [n for n in ours if n.startswith(("mislas.embedder.", "mislas.encoder."))]
    assert len(our_backbone) == len(backbone)  # nothing of ours left at its random initialisation
    assert model.classifier.weight.shape == (5, 512) and model.config.class_counts == [9, 7, 5, 3, 1]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(model_name_or_path="tiny-org/not-a-resnet"), r"model of type 'bert'"),
        (dict(model_name_or_path=REPO_ID, backbone="resnet50"), r"--backbone resnet50 conflicts with .*, a resnet10"),
        (dict(freeze_backbone=True), r"freeze_backbone needs pretrained weights"),
    ],
)
def test_refusals_name_the_culprit(offline_cache, arguments, message):
    with pytest.raises(ValueError, match=message):
        plan_model(ModelArguments(**arguments))


def test_a_resnet_checkpoint_cannot_start_stage_2(offline_cache):
    with pytest.raises(ValueError, match=r"--stage 2 starts from a MiSLAS stage-1 model.*a transformers 'resnet' model"):
        plan_model(ModelArguments(model_name_or_path=REPO_ID), stage="2")


def test_options_apply_to_a_resnet_checkpoint_and_override_a_mislas_one(offline_cache, tmp_path):
    plan = plan_model(ModelArguments(model_name_or_path=REPO_ID, extra_block=True, freeze_backbone=True))
    assert (plan.extra_block, plan.freeze_backbone) == (True, True)
    saved = MislasForImageClassification(MislasConfig(backbone="resnet10", num_labels=2, class_counts=[2, 1]))
    saved.save_pretrained(tmp_path)
    plan = plan_model(ModelArguments(model_name_or_path=str(tmp_path)))
    assert (plan.source, plan.backbone, plan.extra_block, plan.freeze_backbone) == ("mislas", "resnet10", False, False)
    plan = plan_model(ModelArguments(model_name_or_path=str(tmp_path), extra_block=True, freeze_backbone=True))
    assert (plan.extra_block, plan.freeze_backbone) == (True, True)
    with pytest.raises(ValueError, match=r"--backbone resnet18 conflicts with .*, a resnet10 model"):
        plan_model(ModelArguments(model_name_or_path=str(tmp_path), backbone="resnet18"))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A train/test imagefolder of 3 classes of random 40x28 images (the convolutions are what this test is about)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("resnet_folder")
    generator = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 6), ("test", 2)):
        for name in ("ant", "bee", "cow"):
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                pixels = torch.randint(0, 256, (28, 40, 3), generator=generator, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return root


def test_stage1_at_learning_rate_0_keeps_every_convolution_of_the_checkpoint(offline_cache, tiny_folder, tmp_path):
    flags = [
        "--model_name_or_path", REPO_ID, "--stage", "1", "--learning_rate", "0", "--image_size", "64",
        "--train_dir", str(tiny_folder / "train"), "--test_dir", str(tiny_folder / "test"),
        "--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "6",
        "--dataloader_num_workers", "0", "--save_strategy", "no", "--report_to", "none",
    ]
    train(*parse_arguments(flags)[:3])
    saved = load_file(tmp_path / "stage1" / "model.safetensors")
    checkpoint = checkpoint_tensors(offline_cache)
    convolutions = [name for name, tensor in checkpoint.items() if "convolution.weight" in name and tensor.dim() == 4]
    assert len(convolutions) == 1 + 2 * 4 + 3
    for name in convolutions:
        our_name = name.replace("resnet.embedder.", "mislas.embedder.").replace("resnet.encoder.", "mislas.encoder.resnet_encoder.")
        assert torch.equal(saved[our_name], checkpoint[name]), name
    processor = json.loads((tmp_path / "stage1" / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"]) == (PROCESSOR_MEAN, PROCESSOR_STD)
    assert processor["size"] == {"shortest_edge": 64}
    config = json.loads((tmp_path / "stage1" / "config.json").read_text())
    assert (config["backbone"], config["class_counts"]) == ("resnet10", [6, 6, 6])


def test_a_resnet_152_loads_into_the_places_backbone_without_its_third_last_stage_block():
    """Places-LT's `resnet152_places` is ResNet-152 with `layer4` cut to two blocks: a transformers ResNet-152 loads
    into it (`--backbone resnet152_places`) with only stage 4's block 2 left out, every other tensor equal."""
    from transformers import ResNetModel

    from mislas_hf.modeling_resnet_backbones import load_resnet_backbone

    torch.manual_seed(0)
    resnet = ResNetModel(ResNetConfig(depths=[3, 8, 36, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck"))
    model = MislasForImageClassification(MislasConfig(backbone="resnet152_places", extra_block=True, num_labels=3))
    left_out = load_resnet_backbone(model.mislas, resnet)
    assert left_out and {name.split(".layer.")[0] for name in left_out} == {"encoder.stages.3.layers.2"}
    checkpoint = resnet.encoder.state_dict()
    loaded = model.mislas.encoder.resnet_encoder.state_dict()
    assert len(loaded) == len(checkpoint) - len(left_out)
    assert all(torch.equal(tensor, checkpoint[name]) for name, tensor in loaded.items())
