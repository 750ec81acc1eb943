"""Both stages of `recipes/train.py --model_name_or_path DIR` on any transformers vision backbone (issue 23): for a tiny
ViT, ConvNeXt, DINOv2, CLIP (its vision tower), Swin, EfficientNet and a timm architecture (`tiny_vision_checkpoint`),
a few steps per stage on a tiny long-tailed imagefolder fine-tune the backbone in stage 1 and only the head (and the
BN statistics, where there is batch norm) in stage 2; the saved model reloads through `from_pretrained`,
`pipeline("image-classification")` and `trust_remote_code` without mislas_hf, with the same outputs."""

import json

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from mislas_hf.scripts.arguments import ModelArguments
from mislas_hf.scripts.model_setup import build_model, plan_model
from mislas_hf.scripts.train import main

KINDS = ("vit", "convnext", "dinov2", "clip", "swin", "efficientnet", "timm")
MODEL_TYPES = {
    "vit": "vit", "convnext": "convnext", "dinov2": "dinov2", "clip": "clip_vision_model", "swin": "swin",
    "efficientnet": "efficientnet", "timm": "timm_wrapper",
}
HAS_BATCH_NORM = {"efficientnet", "timm"}
TRAIN_IMAGES = {"ant": 8, "bee": 4, "cow": 2}
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory):
    """`train/` (8, 4 and 2 images of 3 classes) and `test/` (2 per class) of random 40x28 PNGs."""
    root = tmp_path_factory.mktemp("tiny_imagefolder")
    generator = torch.Generator().manual_seed(0)
    for split, counts in (("train", TRAIN_IMAGES), ("test", dict.fromkeys(TRAIN_IMAGES, 2))):
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = torch.randint(0, 256, (28, 40, 3), generator=generator, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def trained(tiny_vision_checkpoint, tiny_imagefolder, tmp_path_factory):
    """``trained(kind)``: the output folder of one two-stage run from the tiny checkpoint of `kind` (2 steps per
    stage, 32 px), run once per module."""
    runs = {}

    def get(kind):
        if kind not in runs:
            output_dir = tmp_path_factory.mktemp(f"run_{kind}")
            main([
                "--model_name_or_path", str(tiny_vision_checkpoint(kind)), "--stage", "both",
                "--train_dir", str(tiny_imagefolder / "train"), "--test_dir", str(tiny_imagefolder / "test"),
                "--output_dir", str(output_dir), "--image_size", "32", "--max_steps", "2",
                "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--learning_rate", "0.05",
                "--dataloader_num_workers", "0", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
            ])
            runs[kind] = output_dir
        return runs[kind]

    return get


def backbone_tensors(state_dict: dict) -> dict:
    return {name: tensor for name, tensor in state_dict.items() if name.startswith("mislas.backbone.")}


@pytest.mark.parametrize("kind", KINDS)
def test_stage1_fine_tunes_the_backbone_and_stage2_trains_the_head(kind, trained, tiny_vision_checkpoint):
    output_dir = trained(kind)
    # (read through the model class: transformers saves some models' tensors under their checkpoints' names)
    stage1 = AutoModelForImageClassification.from_pretrained(output_dir / "stage1").state_dict()
    stage2 = AutoModelForImageClassification.from_pretrained(output_dir / "stage2").state_dict()
    config = json.loads((output_dir / "stage2/config.json").read_text())
    assert config["backbone_config"]["model_type"] == MODEL_TYPES[kind]
    assert config["backbone_checkpoint"] == str(tiny_vision_checkpoint(kind))
    assert (config["stage"], config["head_mode"], config["shift_bn"]) == (2, "mislas", kind in HAS_BATCH_NORM)
    assert config["class_counts"] == list(TRAIN_IMAGES.values())
    # stage 1 (full fine-tuning with mixup, the default) moved the weights the backbone started from
    initial = backbone_tensors(initial_model(tiny_vision_checkpoint(kind)).state_dict())
    weights = [name for name in backbone_tensors(stage1) if not name.endswith(BN_STATISTICS)]
    assert sorted(weights) == sorted(name for name in initial if not name.endswith(BN_STATISTICS))
    assert any(not torch.equal(stage1[name], initial[name]) for name in weights)
    # stage 2: every backbone weight fixed; BN statistics shifted exactly where there is batch norm
    assert all(torch.equal(stage1[name], stage2[name]) for name in weights)
    statistics = [name for name in backbone_tensors(stage1) if name.endswith("running_mean")]
    assert bool(statistics) == (kind in HAS_BATCH_NORM)
    assert all(not torch.equal(stage1[name], stage2[name]) for name in statistics)
    assert torch.equal(stage1["classifier.weight"], stage2["classifier.weight"])
    assert not torch.equal(stage1["classifier.delta_weight"], stage2["classifier.delta_weight"])
    card = ModelCard.load(output_dir / "stage2/README.md").text
    backbone_name = "timm/test_efficientnet" if kind == "timm" else MODEL_TYPES[kind]
    assert f"**Backbone:** {backbone_name} (transformers `" in card
    assert f"pretrained weights from `{tiny_vision_checkpoint(kind)}`" in card
    assert f"shifted batch-norm statistics {'on' if kind in HAS_BATCH_NORM else 'off'})" in card


def initial_model(folder):
    """The stage-1 model `--model_name_or_path folder` starts from, before training (`build_model`)."""
    model_args = ModelArguments(model_name_or_path=str(folder))
    data = type("Data", (), {"class_names": list(TRAIN_IMAGES), "class_group_boundaries": None})
    data_args = type("DataArgs", (), {"many_shot_threshold": 100, "few_shot_threshold": 20})
    return build_model(model_args, plan_model(model_args), data, list(TRAIN_IMAGES.values()), data_args)


@pytest.mark.parametrize("kind", KINDS)
def test_the_trained_model_reloads_with_from_pretrained_and_pipeline(kind, trained, tiny_imagefolder):
    folder = trained(kind) / "stage2"
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(model).__name__ == "MislasForImageClassification"
    image = Image.open(tiny_imagefolder / "test" / "bee" / "0.png")
    pixel_values = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 32, 32)
    with torch.no_grad():
        probabilities = model(pixel_values).logits.softmax(-1)[0]
    predictions = pipeline("image-classification", model=str(folder))(image, top_k=3)
    scores = {prediction["label"]: prediction["score"] for prediction in predictions}
    expected = {model.config.id2label[k]: probabilities[k].item() for k in range(3)}
    assert set(scores) == set(TRAIN_IMAGES) and scores == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_the_trained_model_loads_with_trust_remote_code_without_the_package(
    kind, trained, tiny_imagefolder, tmp_path, save_to_hub_cache, load_without_package
):
    folder = trained(kind) / "stage2"
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    repo_id = f"tiny-org/mislas-{kind}"
    save_to_hub_cache(model, processor, tmp_path / "cache", repo_id)
    image_path = tiny_imagefolder / "test" / "cow" / "1.png"
    pixel_values = processor(Image.open(image_path), return_tensors="pt").pixel_values
    torch.save(pixel_values, tmp_path / "pixels.pt")
    outputs = load_without_package(tmp_path / "cache", repo_id, image_path, tmp_path / "pixels.pt", tmp_path)
    with torch.no_grad():
        logits = model(pixel_values).logits
    torch.testing.assert_close(torch.tensor(outputs["logits"]), logits, atol=1e-6, rtol=0)
    scores = {prediction["label"]: prediction["score"] for prediction in outputs["predictions"]}
    probabilities = logits.softmax(-1)[0]
    assert scores == pytest.approx({model.config.id2label[k]: probabilities[k].item() for k in range(3)}, abs=1e-6)


def test_shift_bn_on_a_backbone_without_batch_norm_is_refused_before_stage_1(tiny_vision_checkpoint, tiny_imagefolder,
                                                                             tmp_path):
    with pytest.raises(ValueError, match=r"shift_bn=True .* the dinov2 backbone has none to update: it has no batch"):
        main([
            "--model_name_or_path", str(tiny_vision_checkpoint("dinov2")), "--shift_bn", "true",
            "--train_dir", str(tiny_imagefolder / "train"), "--test_dir", str(tiny_imagefolder / "test"),
            "--output_dir", str(tmp_path), "--max_steps", "1", "--report_to", "none",
        ])
    assert not (tmp_path / "stage1").exists()
