"""Plots of the paper's analysis figures from saved models.

Figure 2: L2 norms of the classifier weight vectors per class (classes sorted by training count), one line per
model, with the training class counts; the paper compares stage 1 with and without mixup.
Figure 3: distributions of the predicted probability of the predicted class on the test set, for the Many, Medium
and Few classes (violin plots), one row per model.
fit.md / fit.json: top-1 and mean confidence of each model on the training split (no augmentation; class-balanced
means) and on the test split, test ECE, and the mean head scale s: how closely a model fits its training images.

    python recipes/analyze.py --models runs/reproduce_cpu/ce/stage1 runs/reproduce_cpu/stage1_mixup/stage1 \
        --labels "CE" "mixup" --dataset cifar10-lt --dataset_name ../shared/data/cifar10 --output_dir docs/figures
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from mislas_hf import MislasForImageClassification
from mislas_hf.calibration import calibration_metrics, class_groups, confidence_and_correctness
from mislas_hf.data import augment_imagenet_batch, load_benchmark, make_transform


def classifier_weight_norms(model: MislasForImageClassification) -> np.ndarray:
    """Per-class L2 norm of the effective classifier weight `r W + ΔW` of Eq. (4), scaled by s."""
    head = model.classifier
    weight = head.retention_factor * head.weight + head.delta_weight
    return (head.scale[:, None] * weight).norm(dim=1).detach().numpy()


def evaluation_transform(benchmark):
    """The benchmark's evaluation transform with normalised float32 output: the `imagenet` augmentation's uint8
    images are normalised per batch with the benchmark's mean/std, as the trainer does on its device."""
    preprocessing = benchmark.preprocessing
    transform = make_transform(preprocessing, train=False)
    if preprocessing.augmentation != "imagenet":
        return transform

    def normalised(batch: dict) -> dict:
        out = transform(batch)
        pixels = torch.stack(out["pixel_values"])
        pixels = augment_imagenet_batch(pixels, train=False, mean=preprocessing.mean, std=preprocessing.std)
        return {**out, "pixel_values": list(pixels)}

    return normalised


def predict_logits(model, dataset, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Float32 logits and the true label of every image of `dataset` (with its evaluation transform set)."""
    logits, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = dataset[start : start + batch_size]
            logits.append(model(torch.stack(batch["pixel_values"])).logits.numpy())
            labels.append(np.asarray(batch["labels"]))
    return np.concatenate(logits), np.concatenate(labels)


def predicted_confidences(model, test_dataset) -> tuple[np.ndarray, np.ndarray]:
    """Probability of the predicted class and the true label of every test image."""
    logits, labels = predict_logits(model, test_dataset)
    confidences, _ = confidence_and_correctness(torch.from_numpy(logits).double().softmax(-1), labels)
    return confidences, labels


def fit_statistics(models: dict, splits: dict) -> dict:
    """How closely each model fits each split (evaluation transform: no crop, flip or mixup), and the mean of its
    head's scale s (Eq. 4). Per split: top-1 accuracy, mean confidence (probability of the predicted class), ECE and
    NLL over the images, and `balanced_accuracy` / `balanced_confidence`, the means over classes of the per-class
    values: what the class-balanced stage-2 stream sees on the long-tailed training split (on the balanced test split
    they equal the plain ones). Stage-2 cross-entropy calibrates the head on that stream, so a model that fits its
    training images far better than the test images comes out over-confident on the test set."""
    statistics = {}
    for label, model in models.items():
        row = {"mean_scale": model.classifier.scale.mean().item()}
        for split_name, dataset in splits.items():
            logits, labels = predict_logits(model, dataset)
            metrics = calibration_metrics(logits, labels)
            confidence, correct = confidence_and_correctness(torch.from_numpy(logits).double().softmax(-1), labels)
            classes = np.unique(labels)
            row[split_name] = {key: metrics[key] for key in ("accuracy", "ece", "nll")} | {
                "confidence": float(confidence.mean()),
                "balanced_accuracy": float(np.mean([correct[labels == k].mean() for k in classes])),
                "balanced_confidence": float(np.mean([confidence[labels == k].mean() for k in classes])),
            }
        statistics[label] = row
    return statistics


def fit_table(statistics: dict) -> str:
    """Markdown table of `fit_statistics` (percent), training split class-balanced."""
    columns = [
        ("train", "balanced_accuracy", "Train top-1 (class-balanced)"),
        ("train", "balanced_confidence", "Train confidence (class-balanced)"),
        ("test", "accuracy", "Test top-1"),
        ("test", "confidence", "Test confidence"),
        ("test", "ece", "Test ECE"),
    ]
    lines = ["| Model | " + " | ".join(title for _, _, title in columns) + " | mean s |", "|---" * (len(columns) + 2) + "|"]
    for label, row in statistics.items():
        cells = [f"{100 * row[split][key]:.2f}" for split, key, _ in columns]
        lines.append(f"| {label} | {' | '.join(cells)} | {row['mean_scale']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_weight_norms(models: dict, class_counts: list[int], path: Path) -> None:
    order = np.argsort(class_counts)[::-1]
    figure = Figure(figsize=(7, 4))
    axis = figure.add_subplot(1, 1, 1)
    for label, model in models.items():
        axis.plot(np.arange(len(order)), classifier_weight_norms(model)[order], marker="o", label=label)
    axis.set_xlabel("Class index (sorted by training images, descending)")
    axis.set_ylabel("Classifier weight norm")
    counts_axis = axis.twinx()
    counts_axis.bar(np.arange(len(order)), np.asarray(class_counts)[order], color="grey", alpha=0.25)
    counts_axis.set_ylabel("Training images")
    axis.legend(loc="upper center")
    axis.set_title("Per-class classifier weight norms (paper Fig. 2)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_confidence_distributions(models: dict, test_dataset, groups: dict, path: Path) -> None:
    figure = Figure(figsize=(7, 2.6 * len(models)))
    for index, (label, model) in enumerate(models.items()):
        confidences, labels = predicted_confidences(model, test_dataset)
        data = [confidences[np.isin(labels, groups[name])] for name in ("many", "medium", "few") if groups[name]]
        names = [name.capitalize() for name in ("many", "medium", "few") if groups[name]]
        axis = figure.add_subplot(len(models), 1, index + 1)
        axis.violinplot(data, orientation="horizontal", showmedians=True)
        axis.set_yticks(np.arange(1, len(names) + 1), names)
        axis.set_xlim(0, 1)
        axis.set_title(f"{label}: predicted probability (paper Fig. 3)")
    figure.axes[-1].set_xlabel("Predicted probability of the predicted class")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="Saved model folders or Hub ids.")
    parser.add_argument("--labels", nargs="+", help="One legend label per model (default: the folder names).")
    parser.add_argument("--dataset", default="cifar10-lt")
    parser.add_argument("--imbalance_factor", type=float, default=100)
    parser.add_argument("--dataset_name", default=None)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    labels = args.labels or [Path(path).parent.name for path in args.models]
    if len(labels) != len(args.models):
        raise ValueError(f"--labels has {len(labels)} entries for {len(args.models)} --models: give one per model.")
    models = {label: MislasForImageClassification.from_pretrained(path).eval() for label, path in zip(labels, args.models)}
    benchmark = load_benchmark(
        args.dataset, imbalance_factor=args.imbalance_factor, dataset_name=args.dataset_name, data_dir=args.data_dir
    )
    first = next(iter(models.values())).config
    groups = class_groups(first.class_counts, boundaries=first.class_group_boundaries)
    test = benchmark.splits["test"]
    test.set_transform(evaluation_transform(benchmark))
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_weight_norms(models, first.class_counts, output_dir / "classifier_weight_norms.png")
    plot_confidence_distributions(models, test, groups, output_dir / "confidence_distributions.png")
    train = benchmark.splits["train"]
    train.set_transform(evaluation_transform(benchmark))
    statistics = fit_statistics(models, {"train": train, "test": test})
    (output_dir / "fit.json").write_text(json.dumps(statistics, indent=2) + "\n")
    (output_dir / "fit.md").write_text(fit_table(statistics))
    print(fit_table(statistics))


if __name__ == "__main__":
    main()
