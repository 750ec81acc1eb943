"""The analysis and reproduction recipes: numbers against direct computations, and their argument checks."""

import importlib.util
import json
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
    reproduce.write_table({"mislas_no_sl": metrics}, "paper", factor, tmp_path / "results.md")
    row, footer = (tmp_path / "results.md").read_text().splitlines()[2], (tmp_path / "results.md").read_text()
    assert row == f"| MiSLAS without shifted BN | 85.12 | 90.00 | 80.00 | 70.00 | 2.34 | 0.500 | {paper} |"
    assert f"imbalance factor {factor}" in footer
    assert {100: "82.5 / 3.66", 50: "85.7 / 2.01", 10: "90.0 / 1.2"}[factor] in footer
    assert reproduce.CONFIGS[factor].name == f"cifar10_lt_if{factor}.yaml" and reproduce.CONFIGS[factor].is_file()


def test_compare_calibration_rejects_an_unknown_row_before_training(tmp_path):
    with pytest.raises(SystemExit):
        load_recipe("compare_calibration").main(["--rows", "ce,ce_platt", "--output_dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def finished_test_priors(compare, index):
    """An `eval_test_priors` record as recipes/evaluate_model.py writes it, with distinct made-up metrics per subset
    and prior mode (`index` tells rows apart)."""
    names = ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform", "backward2", "backward5",
             "backward10", "backward25", "backward50"]
    subsets = {}
    for position, name in enumerate(names):
        subsets[name] = {"subset": {"name": name, "class_counts": [1] * 10, "images": 10}}
        for offset, mode in enumerate(compare.PRIOR_MODES):
            value = 0.001 * (100 * index + 3 * position + offset)
            subsets[name][mode] = {"accuracy": 0.5 + value, "ece": value, "nll": 1 + value}
    return {"model_prior": [0.1] * 10, "prior_estimation": {"calibration": "bcts"}, "subsets": subsets}


def test_compare_calibration_keeps_finished_rows_and_tabulates_them(tmp_path):
    """Rows whose eval_results.json exists are not redone (resuming), and the tables show their numbers: here every
    row is finished, and every row but `ce` also has its evaluation on the test priors, so nothing trains or
    evaluates and both tables come from the folders alone (without --test_priors the missing one is not run)."""
    from matplotlib.figure import Figure

    compare = load_recipe("compare_calibration")
    for model in compare.MODELS:  # trained models, among them those only calibrated rows use (mixup, crt_mixup)
        compare.model_dir(tmp_path, model).mkdir(parents=True)
        (compare.model_dir(tmp_path, model) / "eval_results.json").write_text("{}")
    expected = {}
    for index, row in enumerate(compare.ROWS):
        folder = compare.row_dir(tmp_path, row)
        folder.mkdir(parents=True, exist_ok=True)
        metrics = {f"eval_{key}": 0.01 * (index + 1) + 0.001 * position
                   for position, (_, key, _) in enumerate(compare.COLUMNS)}
        (folder / "eval_results.json").write_text(json.dumps(metrics))
        method = compare.ROWS[row][2]
        temperature = [1.5, 2.5] if method == "classwise_temperature" else 1.0 + 0.25 * index
        temperature = 1.0 if method is None or method == "logit_adjustment" else temperature
        tau = 0.5 + 0.1 * index if method in ("logit_adjustment", "logit_adjustment_temperature") else None
        config = {"temperature": temperature, "calibration": None if method is None else {"method": method}}
        if tau is not None:
            config["calibration"]["tau"] = tau
        (folder / "config.json").write_text(json.dumps(config))
        Figure(figsize=(1, 1)).savefig(folder / "reliability_diagram.png")
        test_priors = None
        if row != "ce":
            test_priors = finished_test_priors(compare, index)
            compare.test_prior_dir(tmp_path, row).mkdir(parents=True)
            (compare.test_prior_dir(tmp_path, row) / "eval_results.json").write_text(
                json.dumps({"eval_accuracy": 0.5, "eval_test_priors": test_priors}))
        expected[row] = (metrics, temperature, tau, test_priors)
    results = compare.main(["--output_dir", str(tmp_path), "--dataset_name", "/nonexistent"])
    assert list(results) == list(compare.ROWS)
    lines = (tmp_path / "results.md").read_text().splitlines()
    for row, line in zip(compare.ROWS, lines[2:]):
        metrics, temperature, tau, _ = expected[row]
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[0] == compare.ROWS[row][0]
        for cell, (_, key, percent) in zip(cells[1:], compare.COLUMNS):
            value = metrics[f"eval_{key}"]
            assert cell == (f"{100 * value:.2f}" if percent else f"{value:.3f}")
        if isinstance(temperature, list):
            assert cells[-2] == "1.50-2.50"
        else:
            assert cells[-2] == ("–" if temperature == 1.0 else f"{temperature:.3f}")
        assert cells[-1] == ("–" if tau is None else f"{tau:.3f}")
    assert json.loads((tmp_path / "results.json").read_text())["mislas_ts"]["metrics"]["ece"] == pytest.approx(
        expected["mislas_ts"][0]["eval_ece"])
    # the second table: per metric, a row per calibration row with test priors, "as trained / known / EM" per subset
    for title, key, percent in compare.TEST_PRIOR_COLUMNS:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"**{title} ("))
        header = [cell.strip() for cell in lines[start + 2].strip("|").split("|")]
        assert header == ["Row", *finished_test_priors(compare, 0)["subsets"]]
        table_rows = [row for row in compare.ROWS if row != "ce"]
        for row, line in zip(table_rows, lines[start + 4:]):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            assert cells[0] == compare.ROWS[row][0]
            for subset, cell in zip(header[1:], cells[1:]):
                values = [expected[row][3]["subsets"][subset][mode][key] for mode in compare.PRIOR_MODES]
                assert cell == " / ".join(f"{100 * v:.2f}" if percent else f"{v:.3f}" for v in values)
        assert lines[start + 4 + len(table_rows)] == ""  # `ce` has no evaluation on the test priors: no line
    assert "test_priors" not in results["ce"] and results["mislas"]["test_priors"] == expected["mislas"][3]
    assert (tmp_path / "reliability_diagrams.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_calibration_trains_balanced_softmax_with_the_logit_adjusted_loss():
    """The Balanced Softmax model: stage 1, no mixup, the logit-adjusted loss at tau = 1 (Ren et al. 2020)."""
    from mislas_hf.scripts.arguments import parse_arguments

    compare = load_recipe("compare_calibration")
    _, data_args, training_args, _ = parse_arguments(
        ["--config", str(compare.CONFIG), *compare.MODELS["balanced_softmax"][1], "--output_dir", "/nonexistent"]
    )
    assert (training_args.stage, training_args.mixup_alpha) == ("1", 0.0)
    assert (training_args.stage1_loss, training_args.logit_adjustment_tau) == ("logit_adjusted", 1.0)
    assert [compare.ROWS[row][2] for row in ("mislas_balanced_ts", "crt_mixup_balanced_ts", "ce_la", "ce_la_ts")] == [
        "balanced_temperature", "balanced_temperature", "logit_adjustment", "logit_adjustment_temperature"]


def test_reproduce_reads_a_finished_stage_instead_of_training_it(tmp_path):
    """A stage folder holding its eval_results.json (trained elsewhere, e.g. on a GPU) is tabulated as it is: its
    metrics come back and nothing is trained (the flags would not even parse)."""
    reproduce = load_recipe("reproduce_cifar10_lt")
    stage_dir = tmp_path / "mislas_no_sl" / "stage2"
    stage_dir.mkdir(parents=True)
    metrics = {"eval_accuracy": 0.8227, "eval_ece": 0.0317, "eval_nll": 0.608}
    (stage_dir / "eval_results.json").write_text(json.dumps(metrics))
    assert reproduce.run(["--no_such_flag"], stage_dir) == metrics


def test_reproduce_tabulates_finished_rows_without_a_diagram_panel(tmp_path, monkeypatch):
    """`--rows crt_mixup` on finished folders: the table holds the row's numbers and no diagram is drawn (cRT is none
    of the CE / LWS / MiSLAS panels), instead of failing after the training."""
    reproduce = load_recipe("reproduce_cifar10_lt")
    metrics = {"eval_accuracy": 0.843, "eval_many_accuracy": 0.9363, "eval_medium_accuracy": 0.8308,
               "eval_few_accuracy": 0.766, "eval_ece": 0.0377, "eval_nll": 0.523}
    for stage_dir in (tmp_path / "stage1_mixup" / "stage1", tmp_path / "crt_mixup" / "stage2"):
        stage_dir.mkdir(parents=True)
        (stage_dir / "eval_results.json").write_text(json.dumps(metrics))
    monkeypatch.setattr(sys, "argv", ["reproduce", "--scale", "paper", "--imbalance_factor", "50", "--rows",
                                      "crt_mixup", "--output_dir", str(tmp_path)])
    reproduce.main()
    assert "| cRT + mixup | 84.30 | 93.63 | 83.08 | 76.60 | 3.77 | 0.523 | 84.2 / 6.89 |" in (
        tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text()) == {"crt_mixup": {"metrics": metrics}}
    assert not (tmp_path / "reliability_diagrams.png").exists()
