"""mislas_hf.convert: official MiSLAS checkpoints and torchvision backbones -> save_pretrained folders.

The checkpoints and reference networks come from tests/conftest.py (`reference_nets`, `reference_checkpoint`,
`save_like_reference`: synthetic, laid out exactly as the reference's train_stage1/2.py save them). Converted logits
must match the reference forward. How a checkpoint's tensors are checked and mapped:
tests/test_reference_checkpoints.py.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from mislas_hf import MislasForImageClassification
from mislas_hf.convert import convert, main
from mislas_hf.data import BENCHMARKS

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "arch, stage",
    [(arch, stage) for arch in ("resnet32", "resnet50", "resnet152_places+block") for stage in (1, 2)]
    + [("resnet101", 2)],  # same code path as resnet50: one stage; iNat: the processor test below
)
def test_converted_model_reproduces_reference_logits(
    tmp_path, reference_nets, reference_checkpoint, save_like_reference, reference_logits, arch, stage
):
    nets = reference_nets(arch)
    checkpoint = reference_checkpoint(
        nets["backbone"], nets["classifier"], lws=nets["lws"] if stage == 2 else None, block=nets["block"]
    )
    path = save_like_reference(checkpoint, tmp_path / "model_best.pth.tar")
    output_dir = tmp_path / "converted"
    train_list = None
    if arch == "resnet50" and stage == 2:  # ImageNet-LT with its training list: original ids kept in id2label
        train_list = tmp_path / "ImageNet_LT_train.txt"
        counts = [1 + (7 * k) % 13 for k in range(1000)]  # many ties
        train_list.write_text("".join(f"train/n{k:08d}/{i}.JPEG {k}\n" for k in range(1000) for i in range(counts[k])))
    convert(path, nets["dataset"], stage, output_dir, train_list=train_list)

    model = MislasForImageClassification.from_pretrained(output_dir).eval()
    assert model.config.backbone == arch.removeprefix("inat-").removesuffix("+block")
    x = torch.randn(2, 3, nets["size"], nets["size"], generator=torch.Generator().manual_seed(6))
    expected = reference_logits(nets, x, stage)
    with torch.no_grad():
        logits = model(x).logits
    assert expected.std() > 0.05  # the comparison is not between near-constant outputs
    assert (logits - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()

    # the head holds W = fc.weight, ΔW = 0 and s = learned_norm (1 in stage 1)
    head = model.classifier
    assert torch.equal(head.weight, nets["classifier"].fc.weight)
    assert torch.equal(head.delta_weight, torch.zeros_like(head.delta_weight))
    scale = nets["lws"].learned_norm[0] if stage == 2 else torch.ones_like(head.scale)
    assert torch.equal(head.scale, scale)
    assert model.config.stage == stage
    assert model.config.head_mode == ("mislas" if stage == 2 else "linear")
    card = (output_dir / "README.md").read_text()
    if arch == "resnet50" and stage == 2:
        order = [int(model.config.id2label[k][len("orig_"):]) for k in range(1000)]
        assert sorted(order) == list(range(1000))
        assert model.config.class_counts == [counts[original] for original in order]
        assert model.config.class_counts == sorted(counts, reverse=True)
        assert "label `orig_<id>` gives its id in the official split lists" in card
    elif arch != "resnet32":
        assert model.config.id2label[0] == "class_0" and model.config.class_counts is None
        assert "labels are `class_<k>` and the original class ids are unknown" in card
    assert sorted(os.listdir(output_dir)) == [
        "README.md", "config.json", "configuration_mislas.py", "model.safetensors", "modeling_mislas.py",
        "modeling_resnet_backbones.py", "modeling_vision_backbones.py", "preprocessor_config.json",
    ]
    assert not [name for name in os.listdir(tmp_path) if "converting" in name]  # no staging folder left behind


def test_inat_processor_and_logits_match_the_reference_evaluation_pipeline(
    tmp_path, reference_nets, reference_checkpoint, save_like_reference, reference_logits
):
    """A converted iNaturalist 2018 checkpoint, fed through its saved image processor, gives the logits of the
    reference's evaluation pipeline (datasets/ina2018.py: Resize(256), CenterCrop(224), ToTensor, Normalize with
    mean (0.466, 0.471, 0.380), std (0.195, 0.194, 0.192)) and forward. A 256x256 image makes the resize an identity,
    so the crop is rows/columns 16..239."""
    nets = reference_nets("inat-resnet50")
    checkpoint = reference_checkpoint(nets["backbone"], nets["classifier"], lws=nets["lws"])
    convert(save_like_reference(checkpoint, tmp_path / "ckpt.pth.tar"), "inat2018", 2, tmp_path / "out")
    rgb = np.random.default_rng(7).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    crop = torch.from_numpy(rgb[16:240, 16:240]).permute(2, 0, 1).double() / 255
    mean = torch.tensor([0.466, 0.471, 0.380], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.195, 0.194, 0.192], dtype=torch.float64)[:, None, None]
    expected = reference_logits(nets, ((crop - mean) / std).float()[None], stage=2)

    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    pixel_values = processor(Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    assert expected.std() > 0.05
    assert (logits - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_torchvision_resnet152_becomes_the_places_lt_stage1_start(tmp_path, torchvision_resnet152_state_dict):
    """`--backbone_checkpoint`: the torchvision ResNet-152 minus fc and layer4.2 (as resnet_places._resnet_fe deletes
    them), so the converted backbone's feature map is that of the full network after layer4.1; training from the
    folder initialises the extra block and classifier itself (PyTorch-default block, ImageNet processor)."""
    network, state = torchvision_resnet152_state_dict(seed=11)
    torch.save(state, tmp_path / "resnet152.pth")
    assert main(["--backbone_checkpoint", str(tmp_path / "resnet152.pth"), "--dataset", "places-lt",
                 "--output_dir", str(tmp_path / "start")]) == 0

    model = MislasForImageClassification.from_pretrained(tmp_path / "start", num_labels=365).eval()
    assert model.config.backbone == "resnet152_places"
    assert model.config.extra_block and model.config.freeze_backbone
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        stem = network.maxpool(F.relu(network.bn1(network.conv1(x))))
        expected = network.layer4[:2](network.layer3(network.layer2(network.layer1(stem))))  # layer4.2 dropped
        features = model.mislas.encoder(model.mislas.embedder(x))[0]
    assert (features - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    conv = model.mislas.extra_block.layer[0].convolution.weight  # initialised on loading, not taken from layer4.2
    assert conv.abs().max() <= 2048**-0.5
    processor = json.loads((tmp_path / "start/preprocessor_config.json").read_text())
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_places_recipe_refuses_to_freeze_a_random_backbone(tmp_path):
    """recipes/configs/places_lt_r152.yaml without --model_name_or_path would freeze random weights; the message
    points at `python -m mislas_hf.convert --backbone_checkpoint`. (The one test here that needs the training code.)"""
    from mislas_hf.scripts.arguments import parse_arguments
    from mislas_hf.scripts.train import train

    flags = ["--config", str(REPO_ROOT / "recipes/configs/places_lt_r152.yaml"), "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match=r"freeze_backbone needs pretrained weights.*--backbone_checkpoint FILE"):
        train(*parse_arguments(flags)[:3])
    assert not any(tmp_path.iterdir())


def test_cifar_config_records_profile_names_and_groups(tmp_path, cifar_checkpoint, save_like_reference):
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    assert main(["--checkpoint", str(path), "--dataset", "cifar10-lt", "--stage", "2", "--output_dir",
                 str(tmp_path / "out"), "--imbalance_factor", "100"]) == 0
    config = MislasForImageClassification.from_pretrained(tmp_path / "out").config
    # int(5000 * 0.01 ** (c / 9)) for c = 0..9
    assert config.class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert config.class_group_boundaries == [3, 7]
    assert config.id2label[0] == "airplane" and config.id2label[9] == "truck"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "best_acc1 = 82.12%" in card and "its_ece = 3.69%" in card  # from the checkpoint, labelled as such
    assert "| Top-1 accuracy (%) | 82.10 |" in card  # the paper's Table 4 number, in the paper's table
    assert "**Backbone:** resnet32 (CIFAR stem), feature size 64" in card
    assert f"image processor used for evaluation ({BENCHMARKS['cifar10-lt'].preprocessing.description()})" in card
    assert ModelCard.load(tmp_path / "out" / "README.md").data.eval_results is None  # nothing measured yet


def test_failure_while_writing_leaves_nothing(tmp_path, cifar_checkpoint, save_like_reference, monkeypatch):
    import mislas_hf.convert as convert_module

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "write_model_card", fail)  # after the weights were written
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    with pytest.raises(OSError, match="disk full"):
        convert(path, "cifar10-lt", 2, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar"]


def test_existing_output_dir_is_kept(tmp_path, cifar_checkpoint, save_like_reference, capsys):
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["--checkpoint", str(path), "--dataset", "cifar10-lt", "--stage", "2", "--output_dir",
                 str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["notes.txt"]


@pytest.mark.parametrize(
    "flags, refusal",
    [
        (["--backbone_checkpoint", "resnet152.pth", "--dataset", "places-lt"],
         "backbone checkpoint {} not found: pass a torchvision ResNet state dict saved with torch.save"),
        (["--timm_checkpoint", "lite0.pth", "--architecture", "tf_efficientnet_lite0"],
         "timm checkpoint {} not found: pass a state dict saved with torch.save"),
    ],
)
def test_a_missing_state_dict_file_is_refused_naming_it(tmp_path, capsys, flags, refusal):
    missing = tmp_path / flags[1]
    flags = [flags[0], str(missing), *flags[2:], "--output_dir", str(tmp_path / "out")]
    assert main(flags) == 1
    assert refusal.format(missing) in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_convert_pushes_the_converted_folder(
    tmp_path, reference_nets, reference_checkpoint, save_like_reference, hub_uploads
):
    nets = reference_nets("resnet32")
    checkpoint = reference_checkpoint(nets["backbone"], nets["classifier"], lws=nets["lws"], block=None)
    path = save_like_reference(checkpoint, tmp_path / "model_best.pth.tar")
    output_dir = convert(path, "cifar10-lt", 2, tmp_path / "converted", push_to_hub="mislas-org/converted")
    pushes = [upload for upload in hub_uploads if upload["repo_id"] == "mislas-org/converted"]
    assert [upload["call"] for upload in pushes] == ["create_repo", "upload_folder"]
    on_disk = {p.relative_to(output_dir).as_posix(): p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    assert pushes[1]["files"] == on_disk and "model.safetensors" in on_disk and "README.md" in on_disk
    assert pushes[1]["message"] == "Convert official MiSLAS CIFAR-10-LT stage-2 checkpoint"
    assert "mislas-org/converted" in on_disk["README.md"].decode()
