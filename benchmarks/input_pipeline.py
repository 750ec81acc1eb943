"""Throughput of the ImageNet-family input pipeline: ours against the reference's kind, side by side, same files.

* ours: `load_list_file_dataset` -> `with_encoded_images` -> `set_transform(make_transform(preprocessing, train))`
  with `preprocessing = Preprocessing.reference("imagenet", image_size)` (uint8 images), the Trainer's collator
  (`transformers.default_data_collator`), and `augment_imagenet_batch(batch, train)` on each collated batch
  (training: colour jitter and normalisation; evaluation: normalisation), which the trainer runs on the training
  device: here on `--device`, by default the CPU, in the main process, as it would without a GPU.
* reference: the reference's `LT_Dataset` (dvlab-research/MiSLAS `datasets/imagenet.py`: list file, PIL
  `Image.open(f).convert("RGB")`), re-implemented here, with its torchvision PIL transforms: train =
  `RandomResizedCrop(224)`, `RandomHorizontalFlip()`, `ColorJitter(0.4, 0.4, 0.4, 0)`, `ToTensor()`, `Normalize`;
  eval = `Resize(256)`, `CenterCrop(224)`, `ToTensor()`, `Normalize`; the default collate.

* device decode: ours as `load_splits` builds it when the training device is a GPU (`mislas_hf.data.gpu_decode`):
  the workers only read the files (`EncodedImageTransform`), `collate_image_batch` hands the encoded JPEGs over,
  and `augment_imagenet_images` decodes them on `--device` (batched `decode_jpeg`, nvJPEG on a CUDA device), crops,
  resizes, flips, jitters and normalises them there. Run by default only with a `--device` other than the CPU
  (name it in `--pipelines` to run it on the CPU).
* decode only: the floor under the CPU pipelines, what no pipeline of this augmentation avoids: the workers read
  and decode each file (`decode_rgb`: torchvision's `decode_jpeg`, as ours) and pass only its size on, nothing
  resized, jittered, normalised or collated. Its images/s over the reference's bounds what any pipeline that
  decodes on the CPU can reach against it.

All read the same files through a `torch.utils.data.DataLoader` with the same `--workers` and `--batch_size`
(shuffled in training, as the training sampler reads). A run times one pass over the split, from creating the
iterator (worker start included) to the last batch, after one untimed pass that warms the page cache; the main
process computes on one thread (`torch.set_num_threads(1)`: the workers occupy the other cores). With `--device
cuda` every pipeline's batches (pinned, as the reference's and the Trainer's loaders pin them) are copied to the
GPU, ours are finished there, and the clock stops once the GPU is done (`torch.cuda.synchronize`). It reports
images/s and the peak RSS of the main process and of the largest worker (`resource.getrusage`). Every (pipeline,
split) runs in a fresh subprocess; `--repeats R` runs them round robin and reports the median of R runs.

Without `--data_dir`, it writes its own set first: `--generate` JPEGs (default 1,200) of photograph-like content,
sizes drawn around 500 x 375 (landscape and portrait), quality 90 (about 70 KB each), in a temporary folder, with
split lists in the reference format (`path label` per line, 80 % train / 20 % test, 100 classes); `--write_set DIR`
only writes such a set (e.g. `--generate 1250 --classes 1000` for a training run of ImageNet-LT's 1000 classes).

    python benchmarks/input_pipeline.py --workers 2 --repeats 3 --json input_pipeline.json
    python benchmarks/input_pipeline.py --device cuda --workers 16 --generate 3000 --json input_pipeline_gpu.json
    python benchmarks/input_pipeline.py --data_dir /data/imagenet --train_list ImageNet_LT_train.txt \\
        --test_list ImageNet_LT_test.txt --workers 8
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from subprocess_measurement import measure_in_subprocess

PIPELINES = ("reference", "ours", "device decode", "decode only")
SPLITS = ("train", "eval")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------- the image set


def write_image_set(folder: Path, count: int, classes: int = 100, seed: int = 0) -> tuple[Path, Path]:
    """`count` photograph-like JPEGs under `folder` and reference-format split lists, image `i` of class
    `i % classes`, the first 80 % for training; returns the (train, test) list paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    lines = []
    for index in range(count):
        width, height = int(rng.integers(440, 561)), int(rng.integers(330, 421))
        if index % 5 == 4:
            width, height = height, width
        # smooth colour regions + mid-frequency texture: compresses like a photograph
        coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
        noise = rng.normal(128, 18, (height // 2, width // 2, 3)).clip(0, 255).astype(np.uint8)
        texture = np.asarray(Image.fromarray(noise).resize((width, height), Image.BILINEAR), dtype=np.float32) - 128
        label = index % classes
        relative = f"train/n{label:05d}/{index:06d}.JPEG"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((base + texture).clip(0, 255).astype(np.uint8)).save(folder / relative, quality=90)
        lines.append(f"{relative} {label}\n")
    split = int(0.8 * count)
    train_list, test_list = folder / "train.txt", folder / "test.txt"
    train_list.write_text("".join(lines[:split]))
    test_list.write_text("".join(lines[split:]))
    return train_list, test_list


# ----------------------------------------------------------------------------------------------- the pipelines


def reference_loader(
    data_dir: str, list_file: str, train: bool, workers: int, batch_size: int, image_size: int, pin_memory: bool
):
    """The reference's `LT_Dataset` with its torchvision PIL transforms, in a DataLoader."""
    import torch
    from PIL import Image
    from torchvision import transforms

    class ListFileDataset(torch.utils.data.Dataset):
        """`path label` lines; each item is the PIL-decoded RGB image through `transform`, and its label."""

        def __init__(self, root, list_path, transform):
            with open(list_path) as lines:
                entries = [line.split() for line in lines if line.strip()]
            self.paths = [os.path.join(root, entry[0]) for entry in entries]
            self.labels = [int(entry[1]) for entry in entries]
            self.transform = transform

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            with open(self.paths[index], "rb") as file:
                image = Image.open(file).convert("RGB")
            return self.transform(image), self.labels[index]

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        transform = transforms.Compose([
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0),
            transforms.ToTensor(),
            normalize,
        ])
    else:
        transform = transforms.Compose([
            transforms.Resize(round(image_size * 256 / 224)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ])
    dataset = ListFileDataset(data_dir, list_file, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=train, num_workers=workers, pin_memory=pin_memory
    )
    return loader, None


def our_loader(data_dir: str, train_list: str, test_list: str, train: bool, workers: int, batch_size: int,
               image_size: int, pin_memory: bool, device_decode: bool, device: str):
    """Our pipeline as `mislas_hf.scripts.data_setup.load_splits` builds it, and the batch part the trainer runs on
    `device`: with `device_decode` as on a GPU (`EncodedImageTransform`, `collate_image_batch`), else as elsewhere
    (`make_transform`, the Trainer's `default_data_collator`)."""
    import functools

    import torch
    from transformers import default_data_collator

    from mislas_hf.data import (
        EncodedImageTransform,
        Preprocessing,
        augment_imagenet_images,
        collate_image_batch,
        load_list_file_dataset,
        make_transform,
        with_encoded_images,
    )

    preprocessing = Preprocessing.reference("imagenet", image_size=image_size)
    splits = load_list_file_dataset(train_list, test_list, data_dir)
    dataset = with_encoded_images(splits["train" if train else "test"])
    dataset.set_transform(EncodedImageTransform() if device_decode else make_transform(preprocessing, train=train))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=train, num_workers=workers, pin_memory=pin_memory,
        collate_fn=collate_image_batch if device_decode else default_data_collator,
    )
    return loader, functools.partial(augment_imagenet_images, preprocessing=preprocessing, device=device)


def decode_only_loader(data_dir: str, list_file: str, train: bool, workers: int, batch_size: int):
    """The files of the list decoded as ours decodes them, each passed on as its `(3, H, W)` size only."""
    import torch

    from mislas_hf.data import decode_rgb

    class DecodedSizes(torch.utils.data.Dataset):
        def __init__(self):
            with open(list_file) as lines:
                self.paths = [os.path.join(data_dir, line.split()[0]) for line in lines if line.strip()]

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, index):
            return torch.tensor(decode_rgb(self.paths[index]).shape)

    return torch.utils.data.DataLoader(DecodedSizes(), batch_size=batch_size, shuffle=train, num_workers=workers)


def measure(spec: dict) -> dict:
    """One timed pass of one pipeline over one split (run in a fresh subprocess)."""
    import torch

    torch.set_num_threads(1)  # the main process: one thread, the workers take the other cores
    device = torch.device(spec["device"])
    train = spec["split"] == "train"
    list_file = spec["train_list"] if train else spec["test_list"]
    common = dict(
        train=train, workers=spec["workers"], batch_size=spec["batch_size"], image_size=spec["image_size"],
        pin_memory=device.type == "cuda",
    )
    if spec["pipeline"] == "reference":
        loader, batch_part = reference_loader(spec["data_dir"], list_file, **common)
    elif spec["pipeline"] == "decode only":
        loader = decode_only_loader(spec["data_dir"], list_file, train, spec["workers"], spec["batch_size"])
    else:
        loader, batch_part = our_loader(
            spec["data_dir"], spec["train_list"], spec["test_list"], **common,
            device_decode=spec["pipeline"] == "device decode", device=device,
        )

    def one_pass() -> int:
        images = 0
        for batch in loader:
            if spec["pipeline"] == "decode only":
                images += batch.shape[0]
                continue
            pixel_values = batch[0] if isinstance(batch, (list, tuple)) else batch["pixel_values"]
            if isinstance(pixel_values, torch.Tensor):  # as the trainer places it (encoded batches stay on the host)
                pixel_values = pixel_values.to(device, non_blocking=True)
            if batch_part is not None:
                pixel_values = batch_part(pixel_values, train)
            if pixel_values.dtype != torch.float32 or pixel_values.shape[1:] != (3, spec["image_size"], spec["image_size"]):
                raise RuntimeError(f"{spec['pipeline']} gave {pixel_values.dtype} {tuple(pixel_values.shape)}")
            images += pixel_values.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return images

    one_pass()  # page cache, allocator
    start = time.perf_counter()
    images = one_pass()
    seconds = time.perf_counter() - start
    return {
        "pipeline": spec["pipeline"],
        "split": spec["split"],
        "images": images,
        "seconds": seconds,
        "images_per_second": images / seconds,
        "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }




# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", help="Image root of the list files (default: generate a set).")
    parser.add_argument("--train_list", help="Training split list, reference format (with --data_dir).")
    parser.add_argument("--test_list", help="Test split list, reference format (with --data_dir).")
    parser.add_argument("--generate", type=int, default=1200, help="Images to generate without --data_dir.")
    parser.add_argument("--classes", type=int, default=100, help="Classes of the generated set.")
    parser.add_argument("--write_set", help="Only write a generated set (images and lists) to this folder.")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both pipelines.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="Runs per (pipeline, split); the median is reported.")
    parser.add_argument(
        "--device", default="cpu",
        help="Where ours finishes its batches (the training device: cpu, cuda); on a GPU every pipeline's batches "
        "are copied there and 'device decode' joins the pipelines.",
    )
    parser.add_argument(
        "--pipelines", help=f"Comma-separated subset of {', '.join(PIPELINES)} (default: all; without 'device decode' "
        "on the CPU). 'reference' always runs: the others are compared with it.",
    )
    parser.add_argument("--json", help="Also write the results (and the command) to this JSON file.")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.measure:
        print(json.dumps(measure(json.loads(options.measure))))
        return {}
    if options.data_dir and not (options.train_list and options.test_list):
        parser.error("--data_dir needs --train_list and --test_list")
    if options.pipelines is None:
        pipelines = [p for p in PIPELINES if p != "device decode" or options.device != "cpu"]
    else:
        pipelines = ["reference", *(p for p in options.pipelines.split(",") if p and p != "reference")]
    unknown = sorted(set(pipelines) - set(PIPELINES))
    if unknown:
        parser.error(f"unknown pipeline(s) {', '.join(unknown)}: use {', '.join(PIPELINES)}")
    if options.write_set:
        print(*write_image_set(Path(options.write_set), options.generate, options.classes))
        return {}

    with tempfile.TemporaryDirectory(prefix="input_pipeline_") as generated:
        if options.data_dir:
            data_dir, train_list, test_list = options.data_dir, options.train_list, options.test_list
        else:
            data_dir = generated
            train_list, test_list = write_image_set(Path(generated), options.generate, options.classes)
        base = dict(
            data_dir=str(data_dir), train_list=str(train_list), test_list=str(test_list), workers=options.workers,
            batch_size=options.batch_size, image_size=options.image_size, device=options.device,
        )
        runs = {(pipeline, split): [] for split in SPLITS for pipeline in pipelines}
        for repeat in range(options.repeats):
            for split in SPLITS:
                for pipeline in pipelines:
                    result = measure_in_subprocess(
                        __file__, {**base, "pipeline": pipeline, "split": split}, f"measuring {pipeline} {split}"
                    )
                    runs[pipeline, split].append(result)
                    print(f"  run {repeat + 1}/{options.repeats} {pipeline:13s} {split:5s} "
                          f"{result['images_per_second']:7.1f} images/s", file=sys.stderr)

    rows = []
    for split in SPLITS:
        medians = {}
        for pipeline in pipelines:
            rates = [run["images_per_second"] for run in runs[pipeline, split]]
            median = statistics.median_low(rates)
            chosen = next(run for run in runs[pipeline, split] if run["images_per_second"] == median)
            medians[pipeline] = median
            row = {**chosen, "all_images_per_second": rates}
            if pipeline != "reference":
                row["vs_reference"] = median / medians["reference"]
            rows.append(row)
    print(f"\n{'split':6s} {'pipeline':13s} {'images/s (median)':>18s} {'runs':>24s} {'peak RSS main / worker':>24s}"
          "  vs reference")
    for row in rows:
        runs_text = ", ".join(f"{rate:.0f}" for rate in row["all_images_per_second"])
        speedup = f"  {row['vs_reference']:.2f}x" if "vs_reference" in row else ""
        print(f"{row['split']:6s} {row['pipeline']:13s} {row['images_per_second']:18.1f} {runs_text:>24s} "
              f"{row['peak_rss_main_mb']:10.0f} / {row['peak_rss_worker_mb']:.0f} MB{speedup}")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "settings": {key: value for key, value in base.items() if key not in ("data_dir", "train_list", "test_list")},
        "images": {"generated": None if options.data_dir else options.generate},
        "results": rows,
    }
    if options.json:
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
