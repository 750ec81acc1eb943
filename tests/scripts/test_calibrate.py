"""recipes/calibrate.py's job (mislas_hf.scripts.calibrate): refusals before any data is read, the temperature fit on
the recorded hold-out against a direct fit, and the hold-out a stage-2 run must share with its stage-1 model."""

import json
from pathlib import Path

import pytest
import torch

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.scripts.calibrate import main

REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def calibrate_main(argv):
    """recipes/calibrate.py's `main` (the recipe is `mislas_hf.scripts.calibrate.main`)."""
    return main(argv)


@pytest.fixture(scope="module")
def uncalibrated_model(cifar10_dir, tmp_path_factory):
    """An (untrained) ResNet-32 whose config records the 2% hold-out of CIFAR-10-LT IF 100 (seed 0), as a training
    run with --validation_split_percentage 2 --seed 0 writes it; plus the held-out images, for direct checks."""
    from mislas_hf.data import Preprocessing, class_counts, load_benchmark, make_transform, stratified_holdout

    benchmark = load_benchmark("cifar10-lt", imbalance_factor=100, dataset_name=str(cifar10_dir))
    _, held_out, _ = stratified_holdout(benchmark.splits["train"], 0.02, seed=0)
    record = {"percentage": 2.0, "seed": 0, "dataset": "cifar10-lt", "imbalance_factor": 100, "split_seed": 0,
              "class_counts": class_counts(held_out, num_classes=10)}
    torch.manual_seed(0)
    model = MislasForImageClassification(
        MislasConfig(num_labels=10, class_counts=CIFAR10_LT_COUNTS, held_out_split=record, class_group_boundaries=[3, 7])
    ).eval()
    with torch.no_grad():
        model.classifier.scale.fill_(8.0)  # confident enough that the temperature matters
    folder = tmp_path_factory.mktemp("uncalibrated")
    model.save_pretrained(folder)
    held_out.set_transform(make_transform(Preprocessing.reference("cifar"), train=False))
    return folder, model, held_out, benchmark


def logits_of(model, dataset):
    with torch.no_grad():
        batch = dataset[:]
        return model(torch.stack(batch["pixel_values"])).logits.double(), torch.as_tensor(batch["labels"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--validation_split_name", "test"], "never on the test split"),
        (["--validation_split_name", "train"], "the model was trained on it"),
        (["--imbalance_factor", "50"], "--imbalance_factor 50.0 differs from the 100"),
        (["--validation_split_percentage", "20"], "--validation_split_percentage 20.0 differs from the 2.0% hold-out"),
    ],
)
def test_calibrate_refuses_the_test_split_and_other_hold_outs_before_reading_data(
    uncalibrated_model, tmp_path, flags, message
):
    folder = uncalibrated_model[0]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        calibrate_main([str(folder), "--dataset", "cifar10-lt", "--dataset_name", "/nonexistent", "--output_dir",
                        str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


def test_calibrate_refuses_a_model_trained_without_a_hold_out(tmp_path):
    MislasForImageClassification(MislasConfig(num_labels=10)).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="records no held-out split: it was trained without --validation_split_percentage"):
        calibrate_main([str(tmp_path / "model"), "--output_dir", str(tmp_path / "out")])


def test_calibrate_refuses_a_hold_out_with_other_images(uncalibrated_model, cifar10_dir, tmp_path):
    folder, model, _, _ = uncalibrated_model
    config = MislasConfig.from_pretrained(folder)
    config.held_out_split = config.held_out_split | {"class_counts": [*config.held_out_split["class_counts"][:9], 4]}
    MislasForImageClassification(config).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"per class differ for classes \[9\]"):
        calibrate_main([str(tmp_path / "model"), "--dataset", "cifar10-lt", "--dataset_name", str(cifar10_dir),
                        "--output_dir", str(tmp_path / "out")])


@pytest.mark.parametrize("method", ["temperature", "classwise_temperature"])
def test_calibrate_fits_on_the_recorded_hold_out_and_reports_the_calibrated_test_metrics(
    uncalibrated_model, cifar10_dir, tmp_path, method
):
    from mislas_hf.calibration import fit_classwise_temperatures, fit_temperature
    from mislas_hf.data import Preprocessing, make_transform, subset

    folder, model, held_out, benchmark = uncalibrated_model
    metrics = calibrate_main([
        str(folder), "--method", method, "--dataset", "cifar10-lt", "--dataset_name", str(cifar10_dir),
        "--output_dir", str(tmp_path),
        "--max_eval_samples", "100", "--per_device_eval_batch_size", "250", "--report_to", "none",
    ])
    # the temperature is the NLL fit on the held-out images, computed here directly
    held_out_logits, held_out_labels = logits_of(model, held_out)
    assert len(held_out_labels) == 250  # 2% of 5000, 2997, ..., 50, rounded: 100 + 60 + 36 + 22 + 13 + 8 + 5 + 3 + 2 + 1
    if method == "temperature":
        expected = torch.tensor(fit_temperature(held_out_logits, held_out_labels), dtype=torch.float64)
    else:
        expected = torch.as_tensor(fit_classwise_temperatures(held_out_logits, held_out_labels))
    calibrated = MislasForImageClassification.from_pretrained(tmp_path).eval()
    temperature = torch.tensor(calibrated.config.temperature, dtype=torch.float64)
    assert torch.allclose(temperature, expected, rtol=1e-4)
    assert (temperature - 1).abs().min() > 0.05
    assert calibrated.config.calibration["method"] == method
    assert calibrated.config.calibration["held_out_images"] == 250
    # the saved model divides by T, and the reported test metrics are those of softmax(z / T)
    test = subset(benchmark.splits["test"], 100, seed=0)  # the training run's seed (held_out_split), as its report
    test.set_transform(make_transform(Preprocessing.reference("cifar"), train=False))
    test_logits, test_labels = logits_of(model, test)
    calibrated_logits, _ = logits_of(calibrated, test)
    assert torch.allclose(calibrated_logits, test_logits / temperature, rtol=1e-5, atol=1e-6)
    nll = torch.nn.functional.cross_entropy(test_logits / temperature, test_labels).item()
    assert metrics["eval_nll"] == pytest.approx(nll, rel=1e-5)
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["eval_nll"] == pytest.approx(nll, rel=1e-5) and "eval_classwise_ece" in saved
    card = (tmp_path / "README.md").read_text()
    assert "**Post-hoc calibration:**" in card and "250 images, never on the test split" in card


def test_stage2_refuses_to_hold_out_other_images_than_its_stage1_model(uncalibrated_model, cifar10_dir, tmp_path):
    from mislas_hf.scripts.arguments import parse_arguments
    from mislas_hf.scripts.train import train

    folder = uncalibrated_model[0]  # records the 2% hold-out drawn with seed 0
    flags = ["--config", str(REPO_ROOT / "recipes" / "configs" / "cifar10_lt_if100.yaml"), "--dataset_name", str(cifar10_dir),
             "--stage", "2", "--model_name_or_path", str(folder), "--validation_split_percentage", "2", "--seed", "1",
             "--max_train_samples", "100", "--output_dir", str(tmp_path / "out")]
    model_args, data_args, training_args, _ = parse_arguments(flags)
    with pytest.raises(ValueError, match="holds out other images than the stage-1 model"):
        train(model_args, data_args, training_args)
    assert not (tmp_path / "out" / "stage2").exists()
