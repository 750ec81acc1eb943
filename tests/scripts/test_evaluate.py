"""recipes/evaluate_model.py's job (mislas_hf.scripts.evaluate) on models whose config records the data options of
their training run (config.training_data): with no data option it evaluates the test split that run reported on; an
option given replaces the recorded one (--test_dir alone: the recorded training split gives the classes, the model's
training counts Many/Medium/Few); a model without a record asks for the options it needs."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.scripts.arguments import DataArguments
from mislas_hf.scripts.saved_model_arguments import training_data_record

REPO_ROOT = Path(__file__).resolve().parents[2]
OWN_TRAIN_COUNTS = {"airplane": 120, "automobile": 30, "frog": 60}  # conftest.OWN_DATA_IMAGES
OWN_HELD_OUT_FRACTION = 0.2  # own_data_run's --validation_split_percentage 20
NOT_QUALITY = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
               "eval_model_preparation_time")


def evaluate_main(argv):
    """`main` of recipes/evaluate_model.py, as the recipe runs it."""
    return runpy.run_path(str(REPO_ROOT / "recipes/evaluate_model.py"))["main"](argv)


def test_training_records_its_data_options_with_absolute_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    data_args = DataArguments(train_dir="data/train", test_dir="data/test", max_train_samples=50,
                              validation_split_percentage=10, many_shot_threshold=40)
    record = training_data_record(data_args, seed=7)
    assert (record["train_dir"], record["test_dir"]) == (str(tmp_path / "data/train"), str(tmp_path / "data/test"))
    assert record["dataset"] is None and record["many_shot_threshold"] == 40 and record["seed"] == 7
    # the counts the run trained on are config.class_counts, its hold-out config.held_out_split
    assert "max_train_samples" not in record and "validation_split_percentage" not in record
    hub_record = training_data_record(DataArguments(dataset_name="user/hub-dataset"), seed=0)
    assert hub_record["dataset_name"] == "user/hub-dataset"


def test_the_saved_config_records_the_run_s_data(own_data_run, cifar10_lt_run, cifar10_dir):
    run_dir, data_dir = own_data_run
    own = json.loads((run_dir / "stage1/config.json").read_text())["training_data"]
    assert (own["train_dir"], own["test_dir"]) == (str(data_dir / "train"), str(data_dir / "test"))
    assert own["dataset"] is None
    assert (own["many_shot_threshold"], own["few_shot_threshold"], own["seed"]) == (50, 30, 0)
    cifar = json.loads((cifar10_lt_run / "stage1/config.json").read_text())["training_data"]
    assert (cifar["dataset"], cifar["imbalance_factor"], cifar["dataset_name"]) == ("cifar10-lt", 100, str(cifar10_dir))
    assert (cifar["max_eval_samples"], cifar["seed"], cifar["split_seed"]) == (200, 0, 0)


@pytest.mark.parametrize("run, test_images", [("own_data_run", 15), ("cifar10_lt_run", 200)])
def test_with_no_data_option_it_evaluates_what_the_training_run_reported_on(run, test_images, request, tmp_path):
    """own data: 3 classes x 5 test images; CIFAR-10-LT: the run's --max_eval_samples 200 drawn with its seed 0."""
    fixture = request.getfixturevalue(run)
    model = (fixture[0] if isinstance(fixture, tuple) else fixture) / "stage1"
    metrics = evaluate_main([str(model), "--output_dir", str(tmp_path)])
    reported = json.loads((model / "eval_results.json").read_text())
    quality = [key for key in reported if key not in NOT_QUALITY]
    assert {"eval_accuracy", "eval_many_accuracy", "eval_few_accuracy", "eval_ece", "eval_nll"} <= set(quality)
    # the run evaluated its channels-last model, this job a freshly loaded one: float32 sums differ in the last bits
    assert {key: metrics[key] for key in quality} == pytest.approx({key: reported[key] for key in quality}, rel=1e-6,
                                                                   abs=1e-6)
    assert f"({test_images} images)" in (tmp_path / "README.md").read_text()
    assert f"({test_images} images)" in (model / "README.md").read_text()


def test_a_given_option_replaces_the_recorded_one(cifar10_lt_run, cifar10_dir, tmp_path):
    """--dataset_name alone on the CIFAR-10-LT model (it once gave '--dataset None differs') and a smaller
    --max_eval_samples: the recorded benchmark, the given subset."""
    metrics = evaluate_main([str(cifar10_lt_run / "stage1"), "--dataset_name", str(cifar10_dir),
                             "--max_eval_samples", "100", "--output_dir", str(tmp_path)])
    assert "(100 images)" in (tmp_path / "README.md").read_text()
    correct = metrics["eval_accuracy"] * 100
    assert correct == pytest.approx(round(correct), abs=1e-9)


def test_test_dir_alone_takes_the_training_split_from_the_record(own_data_run, tmp_path):
    """Only --test_dir: the 12 images of DATA/other_test, the classes of the recorded train_dir, Many/Medium/Few from
    the model's training counts (Many > 50 >= Medium >= 30 > Few), all recomputed here from the images."""
    run_dir, data_dir = own_data_run
    metrics = evaluate_main([str(run_dir / "stage1"), "--test_dir", str(data_dir / "other_test"),
                             "--output_dir", str(tmp_path)])
    model = MislasForImageClassification.from_pretrained(run_dir / "stage1").eval()
    processor = json.loads((run_dir / "stage1/preprocessor_config.json").read_text())
    mean, std = (torch.tensor(processor[key]).view(3, 1, 1) for key in ("image_mean", "image_std"))
    files = sorted((data_dir / "other_test").glob("*/*.png"))
    pixels = torch.stack([
        (torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1) / 255 - mean) / std
        for path in files
    ])
    labels = torch.tensor([model.config.label2id[path.parent.name] for path in files])
    with torch.no_grad():
        logits = model(pixels).logits.double()
    correct = (logits.argmax(-1) == labels).double()
    assert len(files) == 12 and "(12 images)" in (tmp_path / "README.md").read_text()
    assert metrics["eval_accuracy"] == pytest.approx(correct.mean().item(), abs=1e-9)
    assert metrics["eval_nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    trained = {name: n - round(OWN_HELD_OUT_FRACTION * n) for name, n in OWN_TRAIN_COUNTS.items()}
    assert trained == {"airplane": 96, "automobile": 24, "frog": 48}
    assert model.config.class_counts == [trained[model.config.id2label[k]] for k in range(3)]
    group_of = {"airplane": "many", "frog": "medium", "automobile": "few"}  # 96 > 50; 30 <= 48 <= 50; 24 < 30
    for name, group in group_of.items():
        in_group = labels == model.config.label2id[name]
        assert metrics[f"eval_{group}_accuracy"] == pytest.approx(correct[in_group].mean().item(), abs=1e-9), group


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "does not record the data it was trained on .* --dataset BENCHMARK .* --dataset_name .* --train_dir"),
        (["--test_dir", "/nonexistent/test"],
         r"--test_dir /nonexistent/test alone: .* gives the classes and the training counts \(Many/Medium/Few\): pass "
         "--train_dir"),
    ],
)
def test_a_model_without_a_record_asks_for_the_data_options(tmp_path, flags, message):
    MislasForImageClassification(MislasConfig(num_labels=3)).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=message):
        evaluate_main([str(tmp_path / "model"), "--output_dir", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# Shifted test priors (issue 25): the protocol's subsets, the known prior and the EM estimate
# ----------------------------------------------------------------------------------------------------------------

OWN_TRAINED_COUNTS = [96, 24, 48]  # airplane, automobile, frog after the 20 % hold-out (see the test above)
OWN_SUBSET_COUNTS = {
    # own_data_run's test folder: 5 images per class. Training order by count: airplane (0), frog (2), automobile (1);
    # the class of rank i keeps int(5 * (1 / IF) ** (i / 2)) forward, int(5 * (1 / IF) ** ((2 - i) / 2)) backward
    "forward5": [5, 1, 2], "forward2": [5, 2, 3], "uniform": [5, 5, 5], "backward2": [2, 5, 3], "backward5": [1, 5, 2],
}


def own_logits(model, split):
    """Logits (float64) and labels of `split` of own_data_run's data, as the job reads it (row order)."""
    from mislas_hf.data import Preprocessing, make_transform

    split.set_transform(make_transform(Preprocessing.reference("cifar"), train=False))
    with torch.no_grad():
        batch = split[:]
        return model(torch.stack(batch["pixel_values"])).logits.double(), torch.as_tensor(batch["labels"])


def checked_metrics(written, logits, labels):
    """The top-1, NLL and ECE the job wrote for a subset equal those of `logits`, computed here."""
    from mislas_hf.calibration import expected_calibration_error

    confidences, predicted = logits.softmax(-1).max(-1)
    correct = (predicted == labels).numpy()
    assert written["accuracy"] == pytest.approx(correct.mean(), abs=1e-9)
    assert written["nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert written["ece"] == pytest.approx(expected_calibration_error(confidences.numpy(), correct), abs=1e-6)


@pytest.mark.parametrize("em_calibration", [None, "none"])
def test_shifted_priors_known_and_estimated(own_data_run, tmp_path, em_calibration):
    """`--test_priors 5,2 --target_prior estimate` on the own-data model (15 test images): the five subsets with the
    protocol's counts; as trained = the model's logits, known prior = + log pi_subset - log pi_train (a stage-1
    cross-entropy model predicts for its training prior), EM = estimate_target_prior run here, from the model's
    probabilities (--em_calibration none) or by default, the model recording a hold-out, from those of BCTS fit here
    on the 42 held-out images (calibrated for the hold-out's prior)."""
    from mislas_hf.calibration import estimate_target_prior, fit_bias_corrected_temperature
    from mislas_hf.data import load_own_dataset, shifted_test_subsets, stratified_holdout

    run_dir, data_dir = own_data_run
    flags = ["--test_priors", "5,2", "--target_prior", "estimate"]
    flags += [] if em_calibration is None else ["--em_calibration", em_calibration]
    metrics = evaluate_main([str(run_dir / "stage1"), *flags, "--output_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    written = saved["eval_test_priors"]
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]  # the usual metrics stay

    model = MislasForImageClassification.from_pretrained(run_dir / "stage1").eval()
    data = load_own_dataset(train_dir=str(data_dir / "train"), test_dir=str(data_dir / "test"))
    logits, labels = own_logits(model, data.splits["test"])
    train_prior = np.asarray(OWN_TRAINED_COUNTS) / sum(OWN_TRAINED_COUNTS)
    assert model.config.class_counts == OWN_TRAINED_COUNTS
    np.testing.assert_allclose(written["model_prior"], train_prior, rtol=1e-12)
    if em_calibration is None:  # BCTS on the recorded hold-out
        _, held_out, _ = stratified_holdout(data.splits["train"], 0.2, seed=0)
        held_out_logits, held_out_labels = own_logits(model, held_out)
        fit = fit_bias_corrected_temperature(held_out_logits.numpy(), held_out_labels.numpy())
        calibrated = logits / fit.temperature + torch.as_tensor(fit.logit_bias)
        source_prior = np.bincount(held_out_labels.numpy(), minlength=3) / len(held_out_labels)
        estimation = written["prior_estimation"]
        assert estimation["calibration"] == "bcts" and estimation["held_out_images"] == 42
        assert estimation["temperature"] == pytest.approx(fit.temperature, rel=1e-4)
        np.testing.assert_allclose(estimation["logit_bias"], fit.logit_bias, atol=1e-4)
    else:
        calibrated, source_prior = logits, train_prior
        assert written["prior_estimation"]["calibration"] == "none"
    np.testing.assert_allclose(written["prior_estimation"]["source_prior"], source_prior, rtol=1e-9)

    subsets = shifted_test_subsets(labels.numpy(), OWN_TRAINED_COUNTS, imbalance_factors=(5, 2), seed=0)
    assert list(written["subsets"]) == list(OWN_SUBSET_COUNTS) == list(subsets)
    for name, (indices, _) in subsets.items():
        result = written["subsets"][name]
        assert result["subset"]["class_counts"] == OWN_SUBSET_COUNTS[name]
        assert result["subset"]["images"] == sum(OWN_SUBSET_COUNTS[name]) == len(indices)
        assert result["subset"]["seed"] == 0
        true_prior = np.asarray(OWN_SUBSET_COUNTS[name]) / sum(OWN_SUBSET_COUNTS[name])
        z, y = logits[indices], labels[indices]
        checked_metrics(result["as_trained"], z, y)
        checked_metrics(result["known_prior"], z + torch.as_tensor(np.log(true_prior) - np.log(train_prior)), y)
        estimate = estimate_target_prior(calibrated[indices].softmax(-1).numpy(), source_prior)
        assert result["prior_estimate"]["iterations"] == estimate.iterations
        assert result["prior_estimate"]["converged"] == estimate.converged
        np.testing.assert_allclose(result["prior_estimate"]["prior"], estimate.prior, atol=1e-5)
        l1_error = np.abs(estimate.prior - true_prior).sum()
        assert result["prior_estimate"]["l1_error"] == pytest.approx(l1_error, abs=1e-5)
        adapted = calibrated[indices] + torch.as_tensor(np.log(estimate.prior) - np.log(source_prior))
        checked_metrics(result["estimated_prior"], adapted, y)
    # the uniform subset is the whole test split: as trained, the usual metrics
    assert written["subsets"]["uniform"]["as_trained"]["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-9)


def test_the_protocol_subsets_of_the_cifar10_test_set(cifar10_lt_run, tmp_path):
    """`--test_priors protocol` on the whole CIFAR-10 test set (1,000 images per class; class ids in training order):
    the 11 subsets in the protocol's order, each class keeping int(1000 * (1 / IF) ** (i / 9)) images forward and the
    reverse backward; no EM without --target_prior estimate; the uniform subset as trained is the usual evaluation;
    the model's prior, for the known-prior correction, is its training prior (stage 1, cross-entropy)."""
    evaluate_main([str(cifar10_lt_run / "stage1"), "--test_priors", "protocol", "--max_eval_samples", "20000",
                   "--per_device_eval_batch_size", "1000", "--output_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    subsets = saved["eval_test_priors"]["subsets"]
    factors = [50, 25, 10, 5, 2]
    names = [f"forward{f}" for f in factors] + ["uniform"] + [f"backward{f}" for f in reversed(factors)]
    assert list(subsets) == names
    for name, result in subsets.items():
        if name == "uniform":
            expected = [1000] * 10
        else:
            factor = int(name.removeprefix("forward").removeprefix("backward"))
            expected = [int(1000 * (1 / factor) ** (i / 9)) for i in range(10)]
            expected = expected if name.startswith("forward") else expected[::-1]
        assert result["subset"]["class_counts"] == expected, name
        assert result["subset"]["images"] == sum(expected)
        assert set(result) == {"subset", "as_trained", "known_prior"}
    assert subsets["forward50"]["subset"]["class_counts"][-1] == 20 and subsets["uniform"]["subset"]["images"] == 10000
    uniform = subsets["uniform"]
    for key in ("accuracy", "ece", "nll"):
        assert uniform["as_trained"][key] == pytest.approx(saved[f"eval_{key}"], abs=1e-9)
    counts = json.loads((cifar10_lt_run / "stage1/config.json").read_text())["class_counts"]
    np.testing.assert_allclose(saved["eval_test_priors"]["model_prior"], np.asarray(counts) / sum(counts), rtol=1e-12)


@pytest.mark.parametrize(
    "run, flags, message",
    [
        # the recorded --max_eval_samples 200 subset is class-proportional, 20 images per class, and forward50 keeps
        # int(20 * (1 / 50) ** (i / 9)) of class i: 0 from class 7 on
        ("cifar10_lt_run", ["--test_priors", "protocol"],
         r"--test_priors protocol on the 200 test images \(the --max_eval_samples 200 subset\): the forward50 subset "
         r"keeps no image of class 7 \(horse\), so its known prior is 0 .* evaluate the whole balanced test split"),
        ("own_data_run", ["--test_priors", "50"],
         r"--test_priors 50 on the 15 test images: the forward50 subset keeps no image of class 1 \(automobile\), so "
         "its known prior is 0"),
        ("own_data_run", ["--test_priors", "ten"], "pass 'protocol' or comma-separated imbalance factors above 1"),
        ("own_data_run", ["--target_prior", "uniform"], "evaluation takes only 'estimate'"),
        ("own_data_run", ["--em_calibration", "bcts"], "--em_calibration sets how --target_prior estimate calibrates"),
    ],
)
def test_label_shift_options_that_cannot_work_are_refused_before_inference(run, flags, message, request, tmp_path):
    fixture = request.getfixturevalue(run)
    model = (fixture[0] if isinstance(fixture, tuple) else fixture) / "stage1"
    with pytest.raises(ValueError, match=message):
        evaluate_main([str(model), *flags, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_an_unbalanced_test_split_is_refused_for_the_protocol(own_data_run, tmp_path):
    """A test folder with 5 airplanes, 2 automobiles and 5 frogs: backward at imbalance factor 2 would keep all 5
    test images of n_max for automobile, the smallest training class; it has 2."""
    run_dir, data_dir = own_data_run
    for name, keep in (("airplane", 5), ("automobile", 2), ("frog", 5)):
        (tmp_path / "test" / name).mkdir(parents=True)
        for path in sorted((data_dir / "test" / name).glob("*.png"))[:keep]:
            (tmp_path / "test" / name / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"--test_priors 2 on the 12 test images: class 1 has 2 test images but the "
                       r"backward split at imbalance factor 2 keeps 5 of it .* expects a balanced test set"):
        evaluate_main([str(run_dir / "stage1"), "--test_dir", str(tmp_path / "test"), "--test_priors", "2",
                       "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_bcts_needs_a_recorded_hold_out(tmp_path):
    record = training_data_record(DataArguments(dataset="cifar10-lt", dataset_name="/nonexistent"), seed=0)
    MislasForImageClassification(MislasConfig(num_labels=10, training_data=record)).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="--em_calibration bcts fits on the hold-out .* records none .* pass "
                       "--em_calibration none"):
        evaluate_main([str(tmp_path / "model"), "--target_prior", "estimate", "--em_calibration", "bcts",
                       "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_model_folder_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "run" / "stage2"
    with pytest.raises(FileNotFoundError, match=rf"--model {missing}: no such folder; pass the folder of a saved model"):
        evaluate_main([str(missing), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # refused before anything was written
