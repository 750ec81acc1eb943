"""A feature-cached stage (`--cached_feature_views K`): the head trains from pooled features computed once.

A stage may train from cached features when the output of its backbone, the x of Eq. (4), depends on the image alone:
no backbone weight trains and no backbone module behaves differently in training mode
(`check_backbone_cacheable`). That holds in stage 2 (every backbone weight frozen) without shifted batch norm
(`shift_bn` false), and in stage 1 with a frozen pretrained backbone (`freeze_backbone`, the linear probe) and no
mixup (`mixup_alpha` 0: mixup blends images, whose features are not those of the cached ones). The features are
then computed once (`load_or_build_feature_cache`) and the head trains from them
(`MislasForImageClassification(pooled_features=...)`) with the same `MislasTrainer`: the stage's sampler (instance
stream in stage 1, class-aware in stage 2), loss, schedule and optimizer groups. The saved stage folder is the usual
full model (backbone and trained head), evaluated on images.

* Views. K = 1: each training image once, through the evaluation transform (deterministic). K > 1: K draws of the
  training transform per image (torch's RNG seeded with the run's seed during extraction). An epoch is the
  uncached one: the sampler draws as many images as the training set has; each draw of an image takes one of its K
  views, uniformly at random (`CachedFeatureTransform`), where the uncached run would draw a new augmentation.
* Layout. `OUTPUT_DIR/feature_cache/<fingerprint>/` (`--feature_cache_dir DIR`: `DIR/<fingerprint>/`, which runs
  given the same DIR share): a `datasets.Dataset` written by `save_to_disk` (Arrow) with one
  row per training image, in the training set's order: `image_index`, the label column (its feature kept), and
  `pooled_features` (`Array2D` of shape (K, D), float32), plus `feature_cache_key.json`, what the fingerprint
  hashes. The cache sits beside the stage folders, not inside them: a stage folder is the model pushed to the Hub.
  Both stages of a `--stage both` linear probe share one cache (same backbone, images and transform).
* Fingerprint. SHA-256 of the backbone (class and every tensor of its state dict: weights and BN statistics), of
  the training images (every column of their Arrow rows, in order: which images, their bytes and labels), of the
  transform (evaluation or training, the `Preprocessing`, K, and for K > 1 the seed) and of the mixed precision the
  Trainer runs the backbone in (no, bf16 or fp16 autocast). A rerun with the same key loads the cache; any change
  builds a new one beside it, and the log names what changed.
* Extraction runs the trainer's own input path (`data_collator`, `_prepare_inputs`: device placement, the batch
  part of the augmentation, channels-last) and autocast, in batches of `per_device_eval_batch_size`, and stores the
  features in float32: in float32 they are those the uncached stage feeds the head, up to the rounding of
  batch-size-dependent kernels (under bf16 autocast that rounding is bf16's).

Memory: the features of all views are gathered in memory (N x K x D x 4 bytes: 63 MB for CIFAR-10-LT with a 1,280-d
EfficientNet-Lite0) before they are written; training holds them in memory too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.utils.data import DataLoader

from .data import Preprocessing, dataset_labels, label_feature

logger = logging.getLogger(__name__)

FEATURES_COLUMN = "pooled_features"
"""Column of the cache with the K pooled feature vectors of an image, `(K, D)` float32."""
INDEX_COLUMN = "image_index"
"""Column of the cache with the row of the image in the training set."""
FEATURE_CACHE_DIRNAME = "feature_cache"
"""Folder of the output directory that holds the caches of a run, one folder per fingerprint."""
KEY_FILENAME = "feature_cache_key.json"
"""File of a cache folder with what its fingerprint hashes."""
HASHED_ROWS = 1024
"""Rows of the training images hashed at a time."""
KEY_NAMES = {
    "backbone": "the backbone's weights",
    "images": "the training images",
    "transform": "the transform",
    "preprocessing": "the preprocessing",
    "views": "the number of views",
    "seed": "the seed",
    "precision": "the precision",
}
"""What each entry of a cache key stands for, as the log names it."""


def training_dependent(module: nn.Module) -> bool:
    """Whether `module` computes differently in training mode: batch norm (it normalises with the batch's statistics
    and updates its running ones), dropout, and the stochastic-depth layers of timm and transformers (`DropPath`,
    `*DropPath`, `DropBlock2d`)."""
    kind = type(module).__name__
    return isinstance(module, (_BatchNorm, _DropoutNd)) or kind.startswith("Drop") or kind.endswith("DropPath")


def check_backbone_cacheable(model: nn.Module) -> None:
    """`ValueError`, saying why, unless the output of `model.base_model` cannot change while `model` trains: none of
    its parameters trains, and after `model.train()` (as the Trainer calls it) none of its `training_dependent`
    modules is in training mode. True in stage 2 after `prepare_stage2` without shifted batch norm, and in stage 1
    with a frozen pretrained backbone (`freeze_backbone`) and no extra block. Call it on the model the trainer
    trains."""
    backbone = model.base_model
    trainable = [name for name, parameter in backbone.named_parameters() if parameter.requires_grad]
    if trainable:
        raise ValueError(
            f"--cached_feature_views caches the backbone's output, but {len(trainable)} backbone parameters train "
            f"(e.g. {trainable[0]}), so the output changes at every step: cache only a frozen backbone (stage 2, or "
            "stage 1 with --freeze_backbone true and no extra block), or leave cached_feature_views unset"
        )
    was_training = model.training
    model.train()
    in_training_mode = [
        name or type(backbone).__name__
        for name, module in backbone.named_modules()
        if module.training and training_dependent(module)
    ]
    model.train(was_training)
    if in_training_mode:
        raise ValueError(
            f"--cached_feature_views caches the backbone's output, but backbone module {in_training_mode[0]} stays "
            "in training mode (shifted batch norm updates its running statistics at every step), so the output "
            "changes: pass --shift_bn false, or leave cached_feature_views unset"
        )


def backbone_fingerprint(backbone: nn.Module) -> str:
    """SHA-256 of a backbone: its class and every tensor of its state dict (name, dtype, shape and bytes)."""
    digest = hashlib.sha256(type(backbone).__qualname__.encode())
    for name, tensor in backbone.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def images_fingerprint(images: datasets.Dataset) -> str:
    """SHA-256 of a dataset's rows as Arrow holds them (every column, in row order; no image is decoded and no
    transform runs): the same selection of the same images and labels gives the same hash."""
    digest = hashlib.sha256()
    rows = images.with_format("arrow")
    for start in range(0, len(rows), HASHED_ROWS):
        table = rows[start : start + HASHED_ROWS]
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue())
    return digest.hexdigest()


def dataset_transform(dataset: datasets.Dataset):
    """The transform `set_transform` gave `dataset` (e.g. the evaluation transform of the test split);
    `ValueError` when it has none."""
    transform = dataset.format["format_kwargs"].get("transform") if dataset.format["type"] == "custom" else None
    if transform is None:
        raise ValueError(
            f"the dataset (columns {dataset.column_names}) has no transform: set its image transform with "
            "set_transform, as load_splits does"
        )
    return transform


def extract_pooled_features(trainer, images: datasets.Dataset, views: int, augment: bool) -> torch.Tensor:
    """The pooled features (`model.base_model(pixel_values).pooler_output`) of every image of `images` as the
    model of `trainer`, a `MislasTrainer`, sees them: a float32 `[N, views, D]` tensor on the CPU, rows in
    the dataset's order.

    Each view is one pass over `images` (its transform set) in batches of `per_device_eval_batch_size`, collated by
    the trainer's `data_collator` and finished by its `_prepare_inputs` (device placement, `batch_augmentation` in
    training mode when `augment`, channels-last); the backbone runs without gradients under the trainer's autocast
    (`accelerator.autocast`). The passes draw from torch's RNG seeded with `args.seed`; the RNG state outside is
    left as it was. The model's backbone must be frozen (`check_backbone_cacheable`)."""
    if views < 1:
        raise ValueError(f"views={views} must be at least 1")
    model, args = trainer.model, trainer.args
    device = next(model.parameters()).device
    was_training = model.training
    model.train(augment)  # the mode `_prepare_inputs` augments in; a frozen backbone stays in eval mode
    passes = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(args.seed)
        for _ in range(views):
            loader = DataLoader(
                images,
                batch_size=args.per_device_eval_batch_size,
                num_workers=args.dataloader_num_workers,
                collate_fn=trainer.data_collator,
                pin_memory=args.dataloader_pin_memory and device.type == "cuda",
            )
            features = []
            for batch in loader:
                pixel_values = trainer._prepare_inputs(batch)["pixel_values"]
                with torch.no_grad(), trainer.accelerator.autocast():
                    features.append(model.base_model(pixel_values=pixel_values).pooler_output.float().cpu())
            passes.append(torch.cat(features))
    model.train(was_training)
    return torch.stack(passes, dim=1)


def load_or_build_feature_cache(
    trainer, images: datasets.Dataset, cache_root: str | os.PathLike, preprocessing: Preprocessing, views: int
) -> datasets.Dataset:
    """The feature cache of the model of `trainer` on `images`: loaded from `cache_root/<fingerprint>/` when it is
    there, else extracted (`extract_pooled_features`) and saved there first; the log says which, and for a new cache
    what changed since the newest cache beside it. `images` carries the evaluation transform for `views` = 1, the
    training transform for more; `preprocessing` describes them (see the module docstring for the layout and the
    fingerprint)."""
    args = trainer.args
    label_column = args.label_column
    label_feature(images, label_column)
    key = {
        "backbone": backbone_fingerprint(trainer.model.base_model),
        "images": images_fingerprint(images),
        "transform": "evaluation" if views == 1 else "training",
        "preprocessing": dataclasses.asdict(preprocessing),
        "views": views,
        "seed": args.seed if views > 1 else None,  # the evaluation transform draws nothing
        "precision": trainer.accelerator.mixed_precision,
    }
    key = json.loads(json.dumps(key))  # as `KEY_FILENAME` holds it (tuples as lists), to compare with older keys
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_root)
    folder = root / fingerprint
    if folder.is_dir():
        logger.info(f"stage {trainer.stage} trains from the cached pooled features in {folder}")
        return datasets.load_from_disk(str(folder))
    logger.info(
        f"stage {trainer.stage}: extracting the pooled features of {len(images)} images x {views} views into {folder} "
        f"({_what_changed(root, key)})"
    )
    features = extract_pooled_features(trainer, images, views, augment=views > 1)
    cache = datasets.Dataset.from_dict(
        {
            INDEX_COLUMN: list(range(len(images))),
            label_column: dataset_labels(images, label_column),
            FEATURES_COLUMN: features.numpy(),
        },
        features=datasets.Features({
            INDEX_COLUMN: datasets.Value("int64"),
            label_column: images.features[label_column],
            FEATURES_COLUMN: datasets.Array2D(tuple(features.shape[1:]), "float32"),
        }),
    )
    partial = root / f".{fingerprint}.partial-{os.getpid()}"  # renamed when complete: a cache folder is never partial
    cache.save_to_disk(str(partial))
    (partial / KEY_FILENAME).write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    try:
        partial.rename(folder)
    except OSError:  # another process saved the same cache first
        shutil.rmtree(partial)
    return datasets.load_from_disk(str(folder))


def _what_changed(root: Path, key: dict) -> str:
    """What differs between `key` and the key of the newest cache under `root`, in words."""
    keys = [path for path in root.glob(f"*/{KEY_FILENAME}") if not path.parent.name.startswith(".")]  # not partial
    keys.sort(key=lambda path: path.stat().st_mtime)
    if not keys:
        return "no cache yet"
    newest = json.loads(keys[-1].read_text())
    changed = [KEY_NAMES[name] for name in KEY_NAMES if newest.get(name) != key[name]]
    return f"{' and '.join(changed)} changed since {keys[-1].parent.name}"


class CachedFeatureTransform:
    """Callable for `Dataset.set_transform` on a feature cache: a batch of `image_index` and labels ->
    `{"pooled_features": [(D,) float32 tensors], "labels": [int]}`, looked up in `features` (`[N, K, D]`, held in
    memory). With K > 1 each row takes one of its K views, uniformly from torch's global RNG (seeded by the Trainer,
    and per worker in DataLoader workers): the cached counterpart of a fresh augmentation at every draw."""

    def __init__(self, features: torch.Tensor, label_column: str = "label"):
        self.features = features
        self.label_column = label_column

    def __call__(self, batch: dict) -> dict:
        """Features and labels of one batch (columns as lists) of the cache."""
        rows = torch.as_tensor(batch[INDEX_COLUMN])
        num_views = self.features.shape[1]
        views = torch.randint(num_views, rows.shape) if num_views > 1 else torch.zeros_like(rows)
        return {
            FEATURES_COLUMN: list(self.features[rows, views].unbind(0)),
            "labels": [int(label) for label in batch[self.label_column]],
        }


def feature_training_set(cache: datasets.Dataset, label_column: str = "label") -> datasets.Dataset:
    """The training set of a feature-cached stage: `cache` with its features read into memory once and a
    `CachedFeatureTransform`, so that batches need no Arrow decoding of the features; the class-aware sampler reads
    its label column as it reads the images'."""
    features = torch.from_numpy(cache.with_format("numpy", columns=[FEATURES_COLUMN])[:][FEATURES_COLUMN])
    return cache.with_transform(CachedFeatureTransform(features, label_column), columns=[INDEX_COLUMN, label_column])


def cached_feature_training_set(
    trainer, evaluation_images: datasets.Dataset, preprocessing: Preprocessing, cache_root: str | os.PathLike
) -> datasets.Dataset:
    """The training set that replaces the images of `trainer`, a `MislasTrainer` of either stage with
    `args.cached_feature_views` K whose backbone's output cannot change (`check_backbone_cacheable`; stage 1 without
    mixup, which `MislasTrainingArguments` checks): the pooled features of its training images, through the
    evaluation transform of `evaluation_images` (K = 1) or their own training transform (K > 1), from the cache in
    `cache_root` (`load_or_build_feature_cache`; the main process builds it first, the others load it), ready for
    training (`feature_training_set`)."""
    args = trainer.args
    check_backbone_cacheable(trainer.model)
    views = args.cached_feature_views
    images = trainer.train_dataset
    if views == 1:
        images = images.with_transform(dataset_transform(evaluation_images))
    with args.main_process_first(desc=f"stage-{trainer.stage} feature cache"):
        cache = load_or_build_feature_cache(trainer, images, cache_root, preprocessing, views)
    return feature_training_set(cache, args.label_column)
