"""recipes/calibrate.py's job (mislas_hf.scripts.calibrate): refusals before any data is read, the temperature fit on
the recorded hold-out against a direct fit, with the data options the model's config records (an option given and
different is refused, one not given never is), what it prints and stores of the fit, the error of a hold-out with no
finite temperature, and the hold-out a stage-2 run must share with its stage-1 model."""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.calibration import (
    expected_calibration_error,
    fit_classwise_temperatures,
    fit_logit_adjustment,
    fit_temperature,
)
from mislas_hf.data import (
    Preprocessing,
    class_counts,
    load_benchmark,
    load_own_dataset,
    make_transform,
    stratified_holdout,
    subset,
)
from mislas_hf.scripts.arguments import CalibrationArguments, DataArguments, parse_arguments
from mislas_hf.scripts.calibrate import check_calibration_data, main
from mislas_hf.scripts.saved_model_arguments import parse_saved_model_arguments, training_data_record
from mislas_hf.scripts.train import train

REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def calibrate_main(argv):
    """recipes/calibrate.py's `main` (the recipe is `mislas_hf.scripts.calibrate.main`)."""
    return main(argv)


@pytest.fixture(scope="module")
def uncalibrated_model(cifar10_dir, tmp_path_factory):
    """An (untrained) ResNet-32 whose config records the 2% hold-out of CIFAR-10-LT IF 100 (seed 0), as a training
    run with --validation_split_percentage 2 --seed 0 writes it; plus the held-out images, for direct checks."""
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
    record = training_data_record(DataArguments(dataset="cifar10-lt", dataset_name="/nonexistent"), seed=0)
    MislasForImageClassification(MislasConfig(num_labels=10, training_data=record)).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="records no held-out split: it was trained without --validation_split_percentage"):
        calibrate_main([str(tmp_path / "model"), "--output_dir", str(tmp_path / "out")])


def test_calibrate_asks_for_the_data_options_of_a_model_that_records_none(tmp_path):
    MislasForImageClassification(MislasConfig(num_labels=10)).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="does not record the data it was trained on .* --dataset BENCHMARK"):
        calibrate_main([str(tmp_path / "model"), "--output_dir", str(tmp_path / "out")])


def saved_calibration_options(tmp_path, config, flags):
    """What `check_calibration_data` makes of the command line `MODEL --output_dir OUT *flags` for a model saved with
    `config` (nothing is read but the config)."""
    MislasForImageClassification(config).save_pretrained(tmp_path / "model")
    calibration_args, data_args, _ = parse_saved_model_arguments(
        CalibrationArguments, [str(tmp_path / "model"), "--output_dir", str(tmp_path / "out"), *flags]
    )
    return check_calibration_data(calibration_args.model, config, data_args, calibration_args.validation_split_name)


def test_an_option_not_given_is_never_different(tmp_path):
    """The recorded data options stand in for those not given: a model trained on CIFAR-10-LT IF 50 with split seed 3
    is calibrated with --dataset_name alone (no --dataset, no --imbalance_factor, no --split_seed), one trained on
    your own data with no data option (the training default --dataset cifar10-lt no longer applies)."""
    held_out = {"percentage": 5.0, "seed": 1, "dataset": "cifar10-lt", "imbalance_factor": 50, "split_seed": 3,
                "class_counts": [1] * 10}
    record = training_data_record(DataArguments(dataset="cifar10-lt", imbalance_factor=50, split_seed=3), seed=1)
    config = MislasConfig(num_labels=10, held_out_split=held_out, training_data=record)
    options = saved_calibration_options(tmp_path / "benchmark", config, ["--dataset_name", "/data/cifar10"])
    assert (options.dataset, options.imbalance_factor, options.split_seed) == ("cifar10-lt", 50, 3)
    assert (options.dataset_name, options.validation_split_percentage) == ("/data/cifar10", 5.0)
    # a folder saved before training_data existed: the data options of its held_out_split
    options = saved_calibration_options(tmp_path / "older", MislasConfig(num_labels=10, held_out_split=held_out),
                                        ["--dataset_name", "/data/cifar10"])
    assert (options.dataset, options.imbalance_factor, options.split_seed) == ("cifar10-lt", 50, 3)
    own_record = training_data_record(DataArguments(train_dir="/data/own/train", test_dir="/data/own/test"), seed=1)
    own = MislasConfig(num_labels=3, training_data=own_record,
                       held_out_split=held_out | {"dataset": None, "imbalance_factor": None, "split_seed": 0,
                                                  "class_counts": [1, 1, 1]})
    options = saved_calibration_options(tmp_path / "own", own, [])
    assert (options.dataset, options.train_dir, options.test_dir) == (None, "/data/own/train", "/data/own/test")


@pytest.mark.parametrize(
    "run, flags, message",
    [
        ("cifar10_lt_run", ["--imbalance_factor", "50"], r"--imbalance_factor 50.0 differs from the 100 "),
        ("cifar10_lt_run", ["--split_seed", "1"], r"--split_seed 1 differs from the 0 "),
        ("cifar10_lt_run", ["--validation_split_percentage", "5"], r"differs from the 2.0% hold-out"),
        ("own_data_run", ["--dataset", "cifar10-lt"],
         r"the data options name --dataset cifar10-lt, but .* your own data \(no --dataset\)"),
    ],
)
def test_a_given_option_that_differs_from_the_record_is_refused_naming_it(run, flags, message, request, tmp_path):
    fixture = request.getfixturevalue(run)
    model = (fixture[0] if isinstance(fixture, tuple) else fixture) / "stage1"
    with pytest.raises(ValueError, match=message):
        calibrate_main([str(model), "--output_dir", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


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


PRINTED_FIT = re.compile(
    r"fitted (\S+) on .*: (?:T = (?P<t>[\d.]+)|(?P<k>\d+) class-wise T from (?P<low>[\d.]+) to (?P<high>[\d.]+)); "
    r"held-out NLL (?P<nll_before>[\d.]+) -> (?P<nll_after>[\d.]+), "
    r"ECE (?P<ece_before>[\d.]+)% -> (?P<ece_after>[\d.]+)%"
)


def check_the_fit(folder: Path, model_folder: Path, held_out, printed: str) -> None:
    """The temperature saved in `folder` is the NLL fit on the logits of `held_out` computed here with the uncalibrated
    model of `model_folder`; the held-out NLL and ECE before and after that the job stored and printed are those of
    these logits, unscaled and divided by it; the printed T is the saved one."""
    model = MislasForImageClassification.from_pretrained(model_folder).eval()
    held_out.set_transform(make_transform(Preprocessing.reference("cifar"), train=False))
    logits, labels = logits_of(model, held_out)
    config = json.loads((folder / "config.json").read_text())
    method, temperature = config["calibration"]["method"], torch.tensor(config["temperature"], dtype=torch.float64)
    fit = fit_temperature if method == "temperature" else fit_classwise_temperatures
    expected = fit(logits, labels)
    assert torch.allclose(temperature, torch.as_tensor(expected, dtype=torch.float64), rtol=1e-4)
    assert config["calibration"]["held_out_images"] == len(labels)
    shown = PRINTED_FIT.search(printed)
    assert shown is not None and shown[1] == method, printed[-2000:]
    if method == "temperature":
        assert float(shown["t"]) == pytest.approx(config["temperature"], abs=5e-5)
    else:
        assert int(shown["k"]) == len(config["temperature"])
        assert float(shown["low"]) == pytest.approx(min(config["temperature"]), abs=5e-5)
        assert float(shown["high"]) == pytest.approx(max(config["temperature"]), abs=5e-5)
    for when, scaled in (("before", logits), ("after", logits / temperature)):
        confidences, predicted = scaled.softmax(-1).max(-1)
        ece = expected_calibration_error(confidences.numpy(), (predicted == labels).numpy())
        nll = torch.nn.functional.cross_entropy(scaled, labels).item()
        assert config["calibration"][f"held_out_ece_{when}"] == pytest.approx(ece, abs=1e-6), when
        assert config["calibration"][f"held_out_nll_{when}"] == pytest.approx(nll, rel=1e-5), when
        assert float(shown[f"ece_{when}"]) == pytest.approx(100 * ece, abs=0.006), when
        assert float(shown[f"nll_{when}"]) == pytest.approx(nll, abs=6e-5), when


def test_calibrate_recipe_on_an_own_data_model_with_no_data_option(own_data_run, tmp_path):
    """`python recipes/calibrate.py MODEL --output_dir DIR` on a model trained with --train_dir/--test_dir: the recorded
    data (it once refused '--dataset cifar10-lt differs from the None'), the 20 % hold-out of the training folder
    (24 + 6 + 12 images), the fit printed on stdout."""
    run_dir, data_dir = own_data_run
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes/calibrate.py"), str(run_dir / "stage1"),
         "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    data = load_own_dataset(train_dir=str(data_dir / "train"), test_dir=str(data_dir / "test"))
    _, held_out, _ = stratified_holdout(data.splits["train"], 0.2, seed=0)  # the run's --seed 0
    assert len(held_out) == 24 + 6 + 12
    check_the_fit(tmp_path, run_dir / "stage1", held_out, completed.stdout)
    assert "(15 images)" in (tmp_path / "README.md").read_text()  # the recorded test folder, 3 x 5 images


def test_calibrate_on_a_cifar10_lt_model_with_no_data_option(cifar10_lt_run, cifar10_dir, tmp_path, caplog):
    """Class-wise temperatures of the CIFAR-10-LT model with only MODEL and --output_dir: the recorded benchmark, local
    copy, hold-out (2 %, seed 0: 250 images) and test subset (--max_eval_samples 200)."""
    metrics = calibrate_main([str(cifar10_lt_run / "stage1"), "--method", "classwise_temperature",
                              "--output_dir", str(tmp_path)])
    benchmark = load_benchmark("cifar10-lt", imbalance_factor=100, dataset_name=str(cifar10_dir))
    _, held_out, _ = stratified_holdout(benchmark.splits["train"], 0.02, seed=0)
    assert len(held_out) == 250
    printed = "\n".join(record.getMessage() for record in caplog.records if record.levelno == logging.INFO)
    check_the_fit(tmp_path, cifar10_lt_run / "stage1", held_out, printed)
    assert "(200 images)" in (tmp_path / "README.md").read_text()
    correct = metrics["eval_accuracy"] * 200
    assert correct == pytest.approx(round(correct), abs=1e-9)


def test_a_hold_out_with_no_finite_temperature_says_what_would_help(uncalibrated_model, cifar10_dir, tmp_path):
    """All logits equal (s = 0 in Eq. 4): the held-out NLL is flat in T. The refusal counts the 250 held-out images
    and their top-1 accuracy, 40.0 % (ties go to class 0, which has 100 of them), and says what helps."""
    model = MislasForImageClassification.from_pretrained(uncalibrated_model[0])
    with torch.no_grad():
        model.classifier.scale.zero_()
    model.save_pretrained(tmp_path / "flat")
    with pytest.raises(ValueError, match="no minimum at a finite positive temperature") as refusal:
        calibrate_main([str(tmp_path / "flat"), "--dataset_name", str(cifar10_dir),
                        "--output_dir", str(tmp_path / "out")])
    message = str(refusal.value)
    assert "on these 250 held-out images (top-1 accuracy 40.0%)" in message
    for remedy in ("larger --validation_split_percentage", "train longer", "--validation_split_name"):
        assert remedy in message
    assert not (tmp_path / "out" / "config.json").exists()


def test_stage2_refuses_to_hold_out_other_images_than_its_stage1_model(uncalibrated_model, cifar10_dir, tmp_path):
    folder = uncalibrated_model[0]  # records the 2% hold-out drawn with seed 0
    flags = ["--config", str(REPO_ROOT / "recipes" / "configs" / "cifar10_lt_if100.yaml"), "--dataset_name", str(cifar10_dir),
             "--stage", "2", "--model_name_or_path", str(folder), "--validation_split_percentage", "2", "--seed", "1",
             "--max_train_samples", "100", "--output_dir", str(tmp_path / "out")]
    model_args, data_args, training_args, _ = parse_arguments(flags)
    with pytest.raises(ValueError, match="holds out other images than the stage-1 model"):
        train(model_args, data_args, training_args)
    assert not (tmp_path / "out" / "stage2").exists()


# ----------------------------------------------------------------------------------------------------------------
# Calibration for a test prior (issue 25): balanced temperature scaling, post-hoc logit adjustment, --target_prior
# ----------------------------------------------------------------------------------------------------------------

TARGET_COUNTS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # a --target_prior file of counts (the first K): backward-looking


def held_out_nll(logits, labels, weights):
    """sum_i w_i nll_i / sum_i w_i, written out."""
    nll = -logits.log_softmax(-1)[torch.arange(len(labels)), labels]
    return (torch.as_tensor(weights) * nll).sum().item() / float(np.sum(weights))


@pytest.fixture(scope="module")
def trained_held_out(request):
    """``trained_held_out(run)``: the stage-1 model (cross-entropy, 10 steps) of the session fixture `run`
    (`cifar10_lt_run`: CIFAR-10-LT, 2 % hold-out of 250 images; `own_data_run`: 3 classes, 20 % hold-out of 42
    images), its hold-out (seed 0, eval transform) and that hold-out's logits and labels computed here."""
    cache = {}

    def get(run):
        if run not in cache:
            fixture = request.getfixturevalue(run)
            if run == "cifar10_lt_run":
                folder = fixture / "stage1"
                cifar10_dir = request.getfixturevalue("cifar10_dir")
                data = load_benchmark("cifar10-lt", imbalance_factor=100, dataset_name=str(cifar10_dir))
                fraction = 0.02
            else:
                folder = fixture[0] / "stage1"
                data = load_own_dataset(train_dir=str(fixture[1] / "train"), test_dir=str(fixture[1] / "test"))
                fraction = 0.2
            model = MislasForImageClassification.from_pretrained(folder).eval()
            _, held_out, _ = stratified_holdout(data.splits["train"], fraction, seed=0)
            held_out.set_transform(make_transform(Preprocessing.reference("cifar"), train=False))
            cache[run] = (folder, model, held_out, *logits_of(model, held_out))
        return cache[run]

    return get


@pytest.mark.parametrize(
    "run, method, flags, target",
    [
        ("cifar10_lt_run", "balanced_temperature", [], "uniform"),
        ("cifar10_lt_run", "balanced_temperature", ["--target_prior", "train"], "train"),
        ("cifar10_lt_run", "logit_adjustment", [], "uniform"),
        ("cifar10_lt_run", "logit_adjustment", ["--post_hoc_tau", "0.7"], "uniform"),
        ("own_data_run", "logit_adjustment_temperature", ["--target_prior", "FILE"], "file"),
    ],
)
def test_prior_aware_methods_store_the_fit_of_the_held_out_logits(
    trained_held_out, tmp_path, run, method, flags, target
):
    """T, tau and the logit bias the job stores are those computed here from the held-out logits by the formulas:
    pi_s = pi_train, the training prior (a stage-1 cross-entropy model), pi_h = the hold-out's class frequencies, pi_t
    the target; balanced_temperature: T = fit_temperature weighted by pi_s(y) / pi_h(y), b = log pi_t - log pi_s
    (none stored when it is 0); logit adjustment: tau (and T) fit on the hold-out weighted by (1 / K) / pi_h(y),
    b = -tau log pi_train + log pi_t - log(1 / K). The held-out NLL before and after, also reweighted to pi_t, are
    those of z and z / T + b, which the saved model returns."""
    folder, model, held_out, logits, labels = trained_held_out(run)
    num_classes = model.config.num_labels
    target_counts = TARGET_COUNTS[:num_classes]
    prior_file = tmp_path / "target_prior.json"
    prior_file.write_text(json.dumps(target_counts))
    flags = [str(prior_file) if flag == "FILE" else flag for flag in flags]
    output = tmp_path / "calibrated"
    calibrate_main([str(folder), "--method", method, *flags, "--output_dir", str(output), "--report_to", "none"])
    numpy_logits, numpy_labels = logits.numpy(), labels.numpy()
    counts = np.asarray(model.config.class_counts, dtype=np.float64)
    source = counts / counts.sum()
    holdout = np.bincount(numpy_labels, minlength=num_classes) / len(numpy_labels)
    uniform = np.full(num_classes, 1 / num_classes)
    target_prior = {"uniform": uniform, "train": source,
                    "file": np.asarray(target_counts, dtype=np.float64) / sum(target_counts)}[target]
    if method == "balanced_temperature":
        weights = source[numpy_labels] / holdout[numpy_labels]
        temperature, tau = fit_temperature(logits, labels, sample_weight=weights), None
        bias = np.log(target_prior) - np.log(source)
    else:
        if "--post_hoc_tau" in flags:
            temperature, tau = 1.0, 0.7
        else:
            temperature, tau = fit_logit_adjustment(
                numpy_logits, numpy_labels, source, sample_weight=uniform[numpy_labels] / holdout[numpy_labels],
                temperature=None if method == "logit_adjustment_temperature" else 1.0,
            )
        bias = -tau * np.log(source) + np.log(target_prior) - np.log(uniform)
    config = json.loads((output / "config.json").read_text())
    assert config["temperature"] == pytest.approx(temperature, rel=1e-4)
    if method == "balanced_temperature" and target == "train":  # pi_t = pi_s: no correction, no bias stored
        assert np.abs(bias).max() < 1e-12 and config["logit_bias"] is None
    else:
        assert np.abs(bias).max() > 0.5
        np.testing.assert_allclose(config["logit_bias"], bias, rtol=1e-4, atol=1e-4)
    record = config["calibration"]
    assert record["method"] == method and record["held_out_images"] == len(labels)
    np.testing.assert_allclose(record["target_prior"], target_prior, rtol=1e-12)
    np.testing.assert_allclose(config["source_prior"], source, rtol=1e-12)
    if tau is None:
        assert "tau" not in record
    else:
        assert record["tau"] == pytest.approx(tau, abs=1e-4) and record["tau_fit"] == ("--post_hoc_tau" not in flags)
    calibrated_logits = logits / temperature + torch.as_tensor(bias)
    target_weights = target_prior[numpy_labels] / holdout[numpy_labels]
    for when, scaled in (("before", logits), ("after", calibrated_logits)):
        assert record[f"held_out_nll_{when}"] == pytest.approx(
            torch.nn.functional.cross_entropy(scaled, labels).item(), rel=1e-5)
        assert record[f"held_out_target_nll_{when}"] == pytest.approx(
            held_out_nll(scaled, labels, target_weights), rel=1e-5)
    if tau is None or "--post_hoc_tau" not in flags:  # what was fit lowers the NLL it minimised
        assert record["held_out_target_nll_after"] < record["held_out_target_nll_before"]
    calibrated = MislasForImageClassification.from_pretrained(output).eval()
    saved_logits, _ = logits_of(calibrated, held_out)
    expected = logits / config["temperature"] + torch.as_tensor(config["logit_bias"] or [0.0] * num_classes)
    assert torch.allclose(saved_logits, expected, rtol=1e-5, atol=1e-5)
    card = (output / "README.md").read_text()
    named = {"uniform": "for a uniform (balanced) test prior", "train": "for the training test prior",
             "file": f"for the `{prior_file}` test prior"}[target]
    assert named in card and f"{len(labels)} images, never on the test split" in card


@pytest.mark.parametrize(
    "content, error, message",
    [
        (None, FileNotFoundError, "no such file; pass uniform, train, or a file holding a JSON list of 10 positive"),
        ("[0.5, 0.5", ValueError, "is not JSON"),
        ("[0.1, 0.2, 0.3]", ValueError, "holds a list of 3 entries; it must hold a JSON list of 10 positive numbers"),
        ('{"airplane": 1}', ValueError, "holds a JSON dict; it must hold"),
        ("[1, 1, 1, 1, 1, 1, 1, 1, 1, -1]", ValueError, "class 9 .* has -1, but every class needs a positive"),
        ("[1, 1, 1, 0, 1, 1, 1, 1, 1, 1]", ValueError, "class 3 .* has 0, but every class needs a positive"),
    ],
)
def test_a_bad_target_prior_file_is_refused_naming_it_before_reading_data(
    uncalibrated_model, tmp_path, content, error, message
):
    path = tmp_path / "prior.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=f"--target_prior {re.escape(str(path))}.*{message}"):
        calibrate_main([str(uncalibrated_model[0]), "--method", "balanced_temperature", "--target_prior", str(path),
                        "--dataset_name", "/nonexistent", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--method", "temperature", "--target_prior", "uniform"],
         "--target_prior is for the methods that calibrate for a test prior .* --method temperature fits the hold-out"),
        (["--method", "balanced_temperature", "--target_prior", "estimate"],
         "--target_prior estimate is for recipes/evaluate_model.py"),
        (["--method", "logit_adjustment_temperature", "--post_hoc_tau", "1"], "fits T and tau jointly"),
        (["--method", "balanced_temperature", "--post_hoc_tau", "1"],
         "--post_hoc_tau is for --method logit_adjustment"),
        (["--method", "logit_adjustment", "--post_hoc_tau", "nan"], "must be a finite number"),
    ],
)
def test_options_that_do_not_fit_the_method_are_refused(uncalibrated_model, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        calibrate_main([str(uncalibrated_model[0]), *flags, "--dataset_name", "/nonexistent",
                        "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
