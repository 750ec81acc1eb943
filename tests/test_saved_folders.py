"""Folders saved by earlier versions of mislas_hf keep loading: same config, same logits."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

import mislas_hf  # noqa: F401  (registers the model type)

FIXTURE = Path(__file__).parent / "fixtures" / "saved_by_0_1_0"
FIXTURES_880BE06 = Path(__file__).parent / "fixtures" / "saved_by_880be06"


def _fixture_module(fixture: Path = FIXTURE):
    spec = importlib.util.spec_from_file_location(f"make_fixture_{fixture.name}", fixture / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def saved_by_0_1_0(folder: Path) -> Path:
    """The CIFAR ResNet-32 stage-2 folder (class-wise temperature) that mislas_hf 0.1.0 wrote: its config and image
    processor files as written, its weights rewritten under the recorded tensor names (see make_fixture.py)."""
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(FIXTURE / name, folder / name)
    layout = json.loads((FIXTURE / "tensors.json").read_text())
    save_file(_fixture_module().fill_state_dict(layout), folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_cifar_resnet32_stage2_with_temperature_saved_by_0_1_0_gives_the_same_logits(tmp_path):
    folder = saved_by_0_1_0(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(_fixture_module().fixture_pixel_values()).logits
    expected = np.array(json.loads((FIXTURE / "expected_logits.json").read_text()))
    np.testing.assert_allclose(logits.double().numpy(), expected, rtol=0, atol=1e-6)
    # the config reads back as written: stage 2, MiSLAS head, shifted BN, the class-wise temperatures
    written = json.loads((FIXTURE / "config.json").read_text())
    assert (model.config.stage, model.config.head_mode, model.config.shift_bn) == (2, "mislas", True)
    assert model.config.temperature == written["temperature"]
    assert model.config.held_out_split == written["held_out_split"]
    processor = AutoImageProcessor.from_pretrained(folder)
    written_processor = json.loads((FIXTURE / "preprocessor_config.json").read_text())
    assert list(processor.image_mean) == written_processor["image_mean"]
    assert list(processor.image_std) == written_processor["image_std"]
    assert processor.size == {"shortest_edge": 32}


@pytest.mark.parametrize("name", ["resnet50", "resnet152_places"])
def test_imagenet_family_folders_saved_at_880be06_give_the_same_logits(tmp_path, name):
    """ImageNet-LT's ResNet-50 (stage 1, scalar temperature) and Places-LT's ResNet-152 without layer4.2 plus the
    extra block (frozen backbone, stage 2, MiSLAS head, shifted BN), as the code before issue 23 saved them."""
    fixture = FIXTURES_880BE06 / name
    for file in ("config.json", "preprocessor_config.json"):
        shutil.copy(fixture / file, tmp_path / file)
    layout = json.loads((fixture / "tensors.json").read_text())
    save_file(_fixture_module().fill_state_dict(layout), tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert set(model.state_dict()) == set(layout)  # every saved tensor has its place, none is new
    with torch.no_grad():  # float64 as the fixture: float32 logits of these depths vary ~1e-5 with the thread count
        logits = model.double()(_fixture_module().fixture_pixel_values().double()).logits
    expected = np.array(json.loads((fixture / "expected_logits.json").read_text()))
    np.testing.assert_allclose(logits.numpy(), expected, rtol=0, atol=1e-6)
    written = json.loads((fixture / "config.json").read_text())
    for key in ("backbone", "extra_block", "freeze_backbone", "stage", "head_mode", "shift_bn", "temperature"):
        assert getattr(model.config, key) == written[key]
