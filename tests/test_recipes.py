"""The analysis and reproduction recipes: numbers against direct computations, and their argument checks."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from mislas_hf import MislasConfig, MislasForImageClassification

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_with_trained_head():
    torch.manual_seed(0)
    model = MislasForImageClassification(MislasConfig(num_labels=10, class_counts=CIFAR10_LT_COUNTS)).eval()
    with torch.no_grad():
        model.classifier.scale.copy_(torch.linspace(0.5, 2.0, 10))
        model.classifier.delta_weight.normal_(0, 0.1)
    return model


def test_classifier_weight_norms_are_the_norms_of_the_eq4_weight(model_with_trained_head):
    analyze = load_recipe("analyze")
    head = model_with_trained_head.classifier
    with torch.no_grad():
        expected = [
            float(torch.linalg.vector_norm(head.scale[k] * (head.weight[k] + head.delta_weight[k]))) for k in range(10)
        ]
    assert analyze.classifier_weight_norms(model_with_trained_head) == pytest.approx(expected, rel=1e-6)


def test_fit_statistics_match_a_direct_evaluation(model_with_trained_head):
    analyze = load_recipe("analyze")
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(12, 3, 32, 32, generator=generator)
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0]
    dataset = datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels})
    dataset.set_transform(  # as make_transform's: a list of float tensors per batch
        lambda batch: {"pixel_values": [torch.tensor(x) for x in batch["pixel_values"]], "labels": batch["labels"]}
    )
    statistics = analyze.fit_statistics({"model": model_with_trained_head}, {"train": dataset})["model"]
    with torch.no_grad():
        log_probabilities = model_with_trained_head(pixels).logits.double().log_softmax(-1)
    probabilities = log_probabilities.exp()
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == torch.tensor(labels)).double()
    assert statistics["train"]["accuracy"] == pytest.approx(correct.mean().item(), abs=1e-12)
    assert statistics["train"]["confidence"] == pytest.approx(confidence.mean().item(), rel=1e-6)
    nll = -log_probabilities[torch.arange(12), labels].mean().item()
    assert statistics["train"]["nll"] == pytest.approx(nll, rel=1e-5)
    per_class = [correct[[i for i, label in enumerate(labels) if label == k]].mean().item() for k in range(10)]
    assert statistics["train"]["balanced_accuracy"] == pytest.approx(sum(per_class) / 10, abs=1e-12)
    assert statistics["mean_scale"] == pytest.approx(1.25, rel=1e-6)  # mean of linspace(0.5, 2, 10)
    assert "| model | " in analyze.fit_table({"model": statistics | {"test": statistics["train"]}})


def test_reproduce_rejects_an_unknown_row_before_training(tmp_path):
    result = subprocess.run(
        [sys.executable, str(RECIPES / "reproduce_cifar10_lt.py"), "--rows", "mislas,lws", "--output_dir", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "--rows: unknown row(s) lws" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("factor, paper", [(100, "82.1 / 3.7"), (50, "85.7 / 2.17"), (10, "90.0 / 1.2")])
def test_reproduce_table_quotes_table4_for_its_imbalance_factor(tmp_path, factor, paper):
    """The table puts the paper's Table 4 MiSLAS number of the run's imbalance factor (and the reference README's
    checkpoint) beside the measured row, in percent."""
    reproduce = load_recipe("reproduce_cifar10_lt")
    metrics = {"eval_accuracy": 0.8512, "eval_many_accuracy": 0.9, "eval_medium_accuracy": 0.8,
               "eval_few_accuracy": 0.7, "eval_ece": 0.0234, "eval_nll": 0.5}
    reproduce.write_table({"mislas_no_sl": (metrics, 12.5)}, "paper", factor, tmp_path / "results.md")
    row, footer = (tmp_path / "results.md").read_text().splitlines()[2], (tmp_path / "results.md").read_text()
    assert row == f"| MiSLAS without shifted BN | 85.12 | 90.00 | 80.00 | 70.00 | 2.34 | 0.500 | 12.5 | {paper} |"
    assert f"imbalance factor {factor}" in footer
    assert {100: "82.5 / 3.66", 50: "85.7 / 2.01", 10: "90.0 / 1.2"}[factor] in footer
    assert reproduce.CONFIGS[factor].name == f"cifar10_lt_if{factor}.yaml" and reproduce.CONFIGS[factor].is_file()
