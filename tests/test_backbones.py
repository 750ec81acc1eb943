"""Any transformers vision model as the backbone (issue 23). For ViT, ConvNeXt, DINOv2, a CLIP vision tower, Swin,
EfficientNet and a timm architecture through TimmWrapperModel, each a tiny random checkpoint saved as a user's folder
(`tiny_vision_checkpoint`), the MiSLAS model built from that folder pools the features the checkpoint's own model
gives its classifier (to 1e-6), its logits are Eq. (4) on them, its config nests the backbone's, shifted BN exists
exactly where batch norm does, and the backbone may train at its own learning rate or stay frozen."""

import importlib.util
import json

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from transformers import AutoModelForImageClassification, CLIPVisionModel

import mislas_hf.configuration_mislas
from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.scripts.arguments import ModelArguments
from mislas_hf.scripts.model_setup import build_model, plan_model
from mislas_hf.trainer import MislasTrainer
from mislas_hf.training_args import MislasTrainingArguments

KINDS = ("vit", "convnext", "dinov2", "clip", "swin", "efficientnet", "timm")
MODEL_TYPES = {
    "vit": "vit", "convnext": "convnext", "dinov2": "dinov2", "clip": "clip_vision_model", "swin": "swin",
    "efficientnet": "efficientnet", "timm": "timm_wrapper",
}
"""The `backbone_config.model_type` each checkpoint gives (CLIP: its vision tower)."""
FEATURE_WIDTHS = {"vit": 16, "convnext": 16, "dinov2": 32, "clip": 16, "swin": 16, "efficientnet": 320, "timm": 256}
"""M of Eq. (4) for the tiny configs: hidden size 16 (DINOv2: CLS + mean patch, 2 x 16), ConvNeXt's last stage 16,
Swin's 8 x 2, EfficientNet's hidden_dim 320, timm's test_efficientnet 256."""
HAS_BATCH_NORM = {"efficientnet", "timm"}
CLASS_NAMES = ["ant", "bee", "cow"]


def own_model(kind, folder):
    """The checkpoint's own transformers model: its image classifier, or CLIP's vision tower."""
    if kind == "clip":
        return CLIPVisionModel.from_pretrained(folder).eval()
    return AutoModelForImageClassification.from_pretrained(folder).eval()


def own_features(kind, own, pixel_values):
    """The features the checkpoint's own image-classification head reads, written out per model."""
    if kind == "vit":
        return own.vit(pixel_values).last_hidden_state[:, 0]
    if kind == "dinov2":
        tokens = own.dinov2(pixel_values).last_hidden_state
        return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)
    if kind == "timm":
        return own.timm_model.forward_head(own.timm_model.forward_features(pixel_values), pre_logits=True)
    return own.base_model(pixel_values).pooler_output.flatten(1)


def own_head(kind, own):
    """The checkpoint's own classifier on those features (CLIP has none)."""
    if kind == "clip":
        return None
    return own.timm_model.get_classifier() if kind == "timm" else own.classifier


def mislas_model(folder, **model_options) -> MislasForImageClassification:
    """The stage-1 model `recipes/train.py --model_name_or_path folder` builds for 3 classes."""
    model_args = ModelArguments(model_name_or_path=str(folder), **model_options)
    data = type("Data", (), {"class_names": CLASS_NAMES, "class_group_boundaries": None})
    data_args = type("DataArgs", (), {"many_shot_threshold": 100, "few_shot_threshold": 20})
    return build_model(model_args, plan_model(model_args), data, [8, 4, 2], data_args).eval()


def pixels(seed=0):
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_pooled_features_are_those_the_checkpoints_own_classifier_reads(kind, tiny_vision_checkpoint):
    folder = tiny_vision_checkpoint(kind)
    model, own = mislas_model(folder), own_model(kind, folder)
    with torch.no_grad():
        ours = model.mislas(pixels()).pooler_output
        theirs = own_features(kind, own, pixels())
        assert ours.shape == (4, FEATURE_WIDTHS[kind]) and model.classifier.weight.shape == (3, FEATURE_WIDTHS[kind])
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
        assert theirs.std() > 0.1  # informative features, not a constant
        head = own_head(kind, own)
        if head is not None:  # the checkpoint's classifier on our features gives the checkpoint's logits
            torch.testing.assert_close(head(ours), own(pixels()).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head_mode", ["mislas", "crt"])
def test_logits_are_eq4_on_the_pooled_features(kind, head_mode, tiny_vision_checkpoint):
    """z = diag(s) ((r W + ΔW)^T x + b) / T (r = 1 for MiSLAS, 0 for cRT; class-wise T), x the own model's features."""
    folder = tiny_vision_checkpoint(kind)
    model = mislas_model(folder)
    model.set_head_mode(head_mode)
    generator = torch.Generator().manual_seed(2)
    width = FEATURE_WIDTHS[kind]
    weight, delta = torch.randn(3, width, generator=generator), torch.randn(3, width, generator=generator)
    bias, scale = torch.randn(3, generator=generator), 0.5 + torch.rand(3, generator=generator)
    with torch.no_grad():
        for parameter, value in zip(("weight", "delta_weight", "bias", "scale"), (weight, delta, bias, scale)):
            getattr(model.classifier, parameter).copy_(value)
    model.config.temperature = [0.7, 1.0, 1.6]
    with torch.no_grad():
        logits = model(pixels()).logits
        features = own_features(kind, own_model(kind, folder), pixels())
    retention = 1.0 if head_mode == "mislas" else 0.0
    expected = scale * (features @ (retention * weight + delta).T + bias) / torch.tensor([0.7, 1.0, 1.6])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_the_config_nests_the_backbone_config_without_the_checkpoints_labels(kind, tiny_vision_checkpoint, tmp_path):
    folder = tiny_vision_checkpoint(kind)
    model = mislas_model(folder)
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["backbone"] is None and written["backbone_checkpoint"] == str(folder)
    assert written["backbone_config"]["model_type"] == MODEL_TYPES[kind]
    config = MislasConfig.from_pretrained(tmp_path)
    assert config.backbone_config.model_type == MODEL_TYPES[kind]
    assert config.backbone_config.num_labels == 2  # transformers' default: the checkpoint's 5 labels are not kept
    assert [config.id2label[k] for k in range(3)] == CLASS_NAMES
    reloaded = MislasForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels()).logits, model(pixels()).logits, atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_shifted_bn_exists_where_batch_norm_does(kind, tiny_vision_checkpoint):
    model = mislas_model(tiny_vision_checkpoint(kind))
    norms = [module for module in model.mislas.modules() if isinstance(module, _BatchNorm)]
    assert bool(norms) == (kind in HAS_BATCH_NORM)
    if kind not in HAS_BATCH_NORM:
        with pytest.raises(ValueError, match=rf"the {MODEL_TYPES[kind]} backbone has none to update: it has no batch-norm"):
            model.prepare_stage2(shift_bn=True)
        model.prepare_stage2()
        assert model.config.shift_bn is False
        return
    model.prepare_stage2()  # default: on, since there is batch norm
    assert model.config.shift_bn is True
    model.train()
    # in stage 2 only the batch-norm layers (with what timm's BatchNormAct2d holds) are in training mode: dropout and
    # drop-connect are off
    assert {id(m) for m in model.mislas.modules() if m.training} == {id(m) for norm in norms for m in norm.modules()}
    before = {name: tensor.clone() for name, tensor in model.mislas.state_dict().items()}
    model(pixels())
    after = model.mislas.state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    assert moved and all(name.endswith(statistics) for name in moved)
    assert {name.rsplit(".", 1)[0] for name in moved if name.endswith("running_mean")} == {
        name for name, module in model.mislas.named_modules() if isinstance(module, _BatchNorm)
    }


def test_a_frozen_backbone_keeps_its_batch_norm_statistics(tiny_vision_checkpoint):
    model = mislas_model(tiny_vision_checkpoint("efficientnet"), freeze_backbone=True)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    model.train()
    assert not any(module.training for module in model.mislas.backbone.modules())  # the linear probe's features
    with pytest.raises(ValueError, match=r"frozen pretrained backbone \(freeze_backbone\)"):
        model.prepare_stage2(shift_bn=True)
    model.prepare_stage2()
    assert model.config.shift_bn is False


def test_the_backbone_trains_at_its_own_learning_rate(tiny_vision_checkpoint, tmp_path):
    model = mislas_model(tiny_vision_checkpoint("vit"))
    args = MislasTrainingArguments(output_dir=str(tmp_path), stage="1", learning_rate=0.1, backbone_learning_rate=0.01,
                                   report_to="none", use_cpu=True)
    optimizer = MislasTrainer(model=model, args=args).create_optimizer()
    groups = {group["lr"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    assert groups == {
        0.01: {id(p) for p in model.mislas.backbone.parameters()},
        0.1: {id(model.classifier.weight), id(model.classifier.bias)},
    }


def test_a_timm_backbone_without_timm_says_to_install_it(tiny_vision_checkpoint, tmp_path, monkeypatch):
    mislas_model(tiny_vision_checkpoint("timm")).save_pretrained(tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        mislas_hf.configuration_mislas.importlib.util, "find_spec",
        lambda name, *args: None if name == "timm" else find_spec(name, *args),
    )
    with pytest.raises(ImportError, match=r"timm architecture 'test_efficientnet'.*needs the timm package: pip install timm"):
        MislasForImageClassification.from_pretrained(tmp_path)
