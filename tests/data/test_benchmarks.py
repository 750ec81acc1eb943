"""mislas_hf.data.benchmarks: the registry of the paper's benchmarks (their preprocessing, with the reference's
normalisation statistics) and `load_benchmark` (CIFAR-LT from a parquet folder, the list-file benchmarks)."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from mislas_hf.data import (
    BENCHMARKS,
    class_counts,
    dataset_labels,
    load_benchmark,
    long_tailed_class_counts,
    make_transform,
)


@pytest.mark.parametrize(
    ("dataset", "mean", "std"),
    [
        ("imagenet-lt", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("places-lt", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("inat2018", (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
        ("cifar10-lt", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        ("cifar100-lt", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    ],
)
def test_each_benchmark_is_normalised_with_the_reference_statistics(dataset, mean, std):
    """The reference's constants (datasets/imagenet.py, places.py, ina2018.py, cifar10.py, cifar100.py) in the
    device-side batch part, the evaluation transform and the saved image processor."""
    from types import SimpleNamespace

    from mislas_hf.scripts.arguments import DataArguments
    from mislas_hf.scripts.data_setup import train_batch_augmentation

    spec = BENCHMARKS[dataset]
    benchmark = SimpleNamespace(preprocessing=spec.preprocessing)
    size = 32 if spec.preprocessing.augmentation == "cifar" else 224
    colour = np.asarray([30, 140, 220])
    expected = np.broadcast_to(((colour / 255 - np.asarray(mean)) / np.asarray(std))[:, None, None], (3, size, size))
    batch = torch.from_numpy(colour.astype(np.uint8)[:, None, None]).expand(2, 3, size, size).contiguous()
    augmentation = train_batch_augmentation(DataArguments(dataset=dataset), benchmark)
    np.testing.assert_allclose(augmentation(batch, False).numpy(), np.stack([expected] * 2), atol=1e-5)
    picture = Image.new("RGB", (size + 40, size + 20), tuple(int(c) for c in colour))
    if spec.preprocessing.augmentation == "cifar":
        picture = Image.new("RGB", (32, 32), tuple(int(c) for c in colour))
        pixel_values = make_transform(spec.preprocessing, train=False)(
            {"image": [picture], "label": [0]}
        )["pixel_values"][0]
    else:  # uint8 from the workers (the preprocessing's mean/std are not applied there), normalised by the batch part
        raw = make_transform(spec.preprocessing, train=False)({"image": [picture], "label": [0]})["pixel_values"][0]
        assert raw.dtype == torch.uint8
        pixel_values = augmentation(raw[None], False)[0]
    np.testing.assert_allclose(pixel_values.numpy(), expected, atol=1e-5)
    processor = spec.preprocessing.image_processor()
    np.testing.assert_allclose(processor(picture, return_tensors="pt")["pixel_values"][0].numpy(), expected,
                               atol=1e-5)


# ----------------------------------------------------------------------------------------------- load_benchmark


@pytest.mark.slow
def test_load_benchmark_cifar10_lt_from_a_local_parquet_folder(
    cifar10_dir, cifar10, cifar10_lt_if100, reference_long_tailed_rows
):
    benchmark = load_benchmark("cifar10-lt", imbalance_factor=100, dataset_name=str(cifar10_dir))
    assert benchmark.name == "cifar10-lt" and benchmark.imbalance_factor == 100
    assert benchmark.preprocessing.augmentation == "cifar"
    train, test = benchmark.splits["train"], benchmark.splits["test"]
    assert train.column_names == ["image", "label"] == test.column_names
    assert benchmark.class_counts == cifar10_lt_if100 == class_counts(train)
    assert len(test) == 10000 and class_counts(test) == [1000] * 10
    assert benchmark.class_names[:3] == ["airplane", "automobile", "bird"]
    assert benchmark.class_group_boundaries == (3, 7)
    # the same rows as the reference cut: compare a few images with the rows the reference keeps
    rows = reference_long_tailed_rows(dataset_labels(cifar10["train"]), 0.01)
    for position in (0, 5000, 12405):
        assert np.array_equal(np.asarray(train[position]["image"]), np.asarray(cifar10["train"][rows[position]]["img"]))
    factor_10 = load_benchmark("cifar10-lt", 10, dataset_name=str(cifar10_dir))
    assert factor_10.class_counts == long_tailed_class_counts(5000, 10, 10) == class_counts(factor_10.splits["train"])


def test_load_benchmark_offline_says_how_to_use_a_local_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # no cached copy to fall back on
    assert datasets.config.HF_DATASETS_OFFLINE  # set by conftest
    with pytest.raises(ConnectionError, match="--dataset_name /path/to/cifar10-lt") as error:
        load_benchmark("cifar10-lt")
    assert "uoft-cs/cifar10" in str(error.value)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_benchmark("cifar100-lt", dataset_name=str(tmp_path / "absent"))


def test_load_benchmark_places_lt_from_data_dir(tmp_path, splits_dir, make_images, write_list):
    entries = [("p/0.jpg", 3), ("p/1.jpg", 3), ("p/2.jpg", 1)]
    make_images(tmp_path, [name for name, _ in entries])
    write_list(tmp_path / "Places_LT_train.txt", entries)
    write_list(tmp_path / "Places_LT_test.txt", entries[2:])
    benchmark = load_benchmark("Places-LT", data_dir=tmp_path)
    assert benchmark.preprocessing.augmentation == "imagenet" and benchmark.class_group_boundaries == (131, 288)
    assert benchmark.imbalance_factor is None
    assert benchmark.class_counts == [2, 1, 0, 0] and benchmark.class_names == ["orig_3", "orig_1", "orig_0", "orig_2"]
    assert dataset_labels(benchmark.splits["test"]) == [1]

    real = load_benchmark(
        "places-lt", data_dir="/images", train_list=splits_dir / "Places_LT_train.txt",
        test_list=splits_dir / "Places_LT_test.txt", check_files=False,
    )
    assert len(real.class_counts) == 365 and real.class_counts[0] == 4980 and real.class_counts[-1] == 5

    with pytest.raises(FileNotFoundError, match="ImageNet_LT_train.txt"):
        load_benchmark("imagenet-lt", data_dir=tmp_path)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_benchmark("inat2018")
    with pytest.raises(ValueError, match="data_dir, not dataset_name"):
        load_benchmark("places-lt", dataset_name="some/hub-id", data_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset_name"):
        load_benchmark("cifar10-lt", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown"):
        load_benchmark("svhn-lt")
