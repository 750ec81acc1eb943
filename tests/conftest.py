"""Shared test set-up: no network, real data located through MISLAS_CIFAR10_DIR; a recorded stand-in for the Hub; a
tiny CIFAR-10-LT model; re-implementations of the reference networks and checkpoints (for the conversion tests)."""

import copy
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _cifar10_dir() -> Path:
    return Path(os.environ.get("MISLAS_CIFAR10_DIR", SHARED_DATA / "cifar10"))


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """Folder with the real CIFAR-10 parquet files; skips (and .ci/run then fails) when absent."""
    path = _cifar10_dir()
    if not (path / "train-00000-of-00001.parquet").is_file():
        pytest.skip(f"real CIFAR-10 not found in {path}: set MISLAS_CIFAR10_DIR to the folder with the parquet files")
    return path


@pytest.fixture(scope="session")
def splits_dir() -> Path:
    """Folder with the official ImageNet-LT / Places-LT / iNaturalist split lists."""
    path = Path(os.environ.get("MISLAS_SPLITS_DIR", SHARED_DATA / "splits"))
    if not (path / "Places_LT_train.txt").is_file():
        pytest.skip(f"official split lists not found in {path}: set MISLAS_SPLITS_DIR")
    return path


class RecordingHfApi:
    """Stand-in for `huggingface_hub.HfApi` inside `mislas_hf.hub_upload` (the tests never reach the network): records
    each call, and for `upload_folder` the repo id, message, revision and the bytes of every file it would upload
    (the folder's files that `allow_patterns` / `ignore_patterns` and huggingface_hub's own ignore patterns keep, as
    `HfApi.upload_folder` selects them), read when the upload is made."""

    def __init__(self, uploads: list):
        self.uploads = uploads

    def create_repo(self, repo_id, **kwargs):
        self.uploads.append({"call": "create_repo", "repo_id": repo_id, "private": kwargs.get("private")})

    def create_branch(self, repo_id, branch, **kwargs):
        self.uploads.append({"call": "create_branch", "repo_id": repo_id, "branch": branch})

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, revision=None, allow_patterns=None,
                      ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

        folder = Path(folder_path)
        names = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
        ignored = list(ignore_patterns or []) + DEFAULT_IGNORE_PATTERNS
        kept = filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignored)
        self.uploads.append({
            "call": "upload_folder", "repo_id": repo_id, "message": commit_message, "revision": revision,
            "files": {name: (folder / name).read_bytes() for name in kept},
        })


@pytest.fixture(scope="module")
def hub_uploads():
    """The Hub calls of `mislas_hf.hub_upload.push_model_folder` made by this module's tests, in order (no
    network)."""
    import mislas_hf.hub_upload

    uploads = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mislas_hf.hub_upload, "HfApi", lambda: RecordingHfApi(uploads))
        yield uploads


def tiny_cifar10_model():
    """A fresh ResNet-32 for CIFAR-10-LT (IF 100), built with seed 0: 10 labels with CIFAR-10's class names, the
    training counts of CIFAR-10-LT and the reference's Many / Medium / Few split; stage 1, linear head."""
    import torch

    from mislas_hf import MislasConfig, MislasForImageClassification
    from mislas_hf.data import BENCHMARKS, long_tailed_class_counts

    spec = BENCHMARKS["cifar10-lt"]
    torch.manual_seed(0)
    config = MislasConfig(
        backbone="resnet32",
        num_labels=spec.num_classes,
        id2label=dict(enumerate(spec.class_names)),
        label2id={name: k for k, name in enumerate(spec.class_names)},
        class_counts=long_tailed_class_counts(spec.cifar_images_per_class, spec.num_classes, 100),
        class_group_boundaries=list(spec.class_group_boundaries),
    )
    return MislasForImageClassification(config)


@pytest.fixture(name="tiny_cifar10_model", scope="session")
def tiny_cifar10_model_fixture():
    """``tiny_cifar10_model()``: a fresh seeded ResNet-32 with CIFAR-10-LT's labels, counts and groups (each call
    builds a new one, so a test may change or train it)."""
    return tiny_cifar10_model


# ----------------------------------------------------------------------------------------------------------------
# Reference networks and checkpoints (tests/test_convert.py, tests/test_reference_checkpoints.py)
#
# The checkpoints are synthetic but laid out exactly as the reference's train_stage1/2.py save them: backbones built
# here as small re-implementations of the reference forward (CIFAR ResNet-32 with option-A shortcuts;
# torchvision-layout bottleneck ResNets), wrapped in DataParallel (keys `module.`), random weights and BN statistics,
# `its_ece` a numpy float pickled as numpy 1.x does, legacy (torch 1.2) file format.
# ----------------------------------------------------------------------------------------------------------------

class RefCifarBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.option_a = stride != 1 or in_planes != planes
        self.planes = planes

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4)) if self.option_a else x
        return F.relu(out + shortcut)


class RefCifarResNet32(nn.Module):
    """resnet_cifar.ResNet_fe(BasicBlock, [5, 5, 5]): pooled 64-d features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for index, planes in enumerate((16, 32, 64)):
            blocks = []
            for block in range(5):
                blocks.append(RefCifarBlock(in_planes, planes, 2 if index > 0 and block == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(out, out.size()[3]).flatten(1)


class RefBottleneck(nn.Module):
    """torchvision Bottleneck (v1.5: stride on the 3x3 convolution)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class RefResNet(nn.Module):
    """resnet.ResNet_FE (pooled features) or resnet_places.ResNet_FE (feature map, `pool=False`); `resnet152_fe` of
    resnet_places is `RefResNet((3, 8, 36, 2), pool=False)`: ResNet-152 without layer4.2."""

    def __init__(self, layers, pool=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
            stage = [RefBottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            stage += [RefBottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.pool = pool

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1) if self.pool else x


class RefClassifier(nn.Module):
    """`Classifier` of the reference (resnet_places' also average-pools the feature map first)."""

    def __init__(self, features, classes, pool=False):
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.pool = pool

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1) if self.pool else x)


class RefLearnableWeightScaling(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.learned_norm = nn.Parameter(torch.ones(1, classes))

    def forward(self, x):
        return self.learned_norm * x


def randomize(module, seed):
    """Random weights and BN affine parameters (BN statistics come from `calibrate_batch_norm`)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, nn.Conv2d):
                fan_in = child.weight[0].numel()
                child.weight.copy_(torch.randn(child.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
            elif isinstance(child, nn.BatchNorm2d):
                child.weight.copy_(0.3 + 0.5 * torch.rand(child.num_features, generator=generator))
                child.bias.copy_(0.1 * torch.randn(child.num_features, generator=generator))
            elif isinstance(child, nn.Linear):
                child.weight.copy_(torch.randn(child.weight.shape, generator=generator) / math.sqrt(child.in_features))
                child.bias.copy_(0.1 * torch.randn(child.bias.shape, generator=generator))
            elif isinstance(child, RefLearnableWeightScaling):
                child.learned_norm.copy_(0.5 + torch.rand(child.learned_norm.shape, generator=generator))
    return module.eval()


def calibrate_batch_norm(modules, size, seed):
    """Random BN running statistics of the right scale: the statistics of random images passed through `modules`
    in sequence, then perturbed per channel (so eval-mode BN does not normalise exactly), plus random counters."""
    generator = torch.Generator().manual_seed(seed)
    norms = [child for module in modules for child in module.modules() if isinstance(child, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    x = torch.randn(4, 3, size, size, generator=generator)
    with torch.no_grad():
        for module in modules:
            x = module.train()(x)
    with torch.no_grad():
        for norm in norms:
            norm.running_mean.add_(0.1 * torch.randn(norm.num_features, generator=generator))
            norm.running_var.mul_(0.8 + 0.4 * torch.rand(norm.num_features, generator=generator))
            norm.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=generator)))
            norm.momentum = 0.1
    for module in modules:
        module.eval()


def reference_checkpoint(backbone, classifier, lws=None, block=None):
    """The dict train_stage1/2.py save (DataParallel-wrapped state dicts; `best_acc1` a tensor, `its_ece` numpy)."""
    checkpoint = {
        "epoch": 200,
        "state_dict_model": nn.DataParallel(backbone).state_dict(),
        "state_dict_classifier": nn.DataParallel(classifier).state_dict(),
        "best_acc1": torch.tensor(82.125),
        "its_ece": np.float64(3.6875),
    }
    if block is not None:
        checkpoint["state_dict_block"] = nn.DataParallel(block).state_dict()
    if lws is not None:
        checkpoint["state_dict_lws_model"] = nn.DataParallel(lws).state_dict()
    return checkpoint


def save_like_reference(checkpoint, path):
    """torch 1.2's (non-zip) format, with numpy scalars pickled under numpy 1.x's module name."""
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    return path


ARCHS = {
    # dataset, classes, input size, backbone factory, places layout. Full-size layouts; 64x64 inputs keep it fast.
    "resnet32": ("cifar10-lt", 10, 32, RefCifarResNet32, False),
    "resnet50": ("imagenet-lt", 1000, 64, lambda: RefResNet((3, 4, 6, 3)), False),
    "resnet101": ("imagenet-lt", 1000, 64, lambda: RefResNet((3, 4, 23, 3)), False),  # paper Table 7, detected
    "inat-resnet50": ("inat2018", 8142, 64, lambda: RefResNet((3, 4, 6, 3)), False),
    # resnet_places.resnet152_fe ([3, 8, 36, 2]) + Bottleneck(2048, 512) + Classifier (pools the feature map)
    "resnet152_places+block": ("places-lt", 365, 64, lambda: RefResNet((3, 8, 36, 2), pool=False), True),
}


@pytest.fixture(scope="module")
def reference_nets():
    """``reference_nets(arch)``: the reference modules of one of `ARCHS` (random weights, calibrated BN statistics),
    built once per test module: dataset, input size, backbone, Places-LT block, classifier and LWS scale."""
    cache = {}

    def get(arch):
        if arch not in cache:
            dataset, classes, size, factory, places = ARCHS[arch]
            features = 64 if arch == "resnet32" else 2048
            nets = {
                "dataset": dataset,
                "size": size,
                "backbone": randomize(factory(), 1),
                "block": randomize(RefBottleneck(2048, 512), 2) if places else None,
                "classifier": randomize(RefClassifier(features, classes, pool=places), 3),
                "lws": randomize(RefLearnableWeightScaling(classes), 4),
            }
            calibrate_batch_norm([nets["backbone"]] + ([nets["block"]] if places else []), size, 5)
            cache[arch] = nets
        return cache[arch]

    return get


def reference_logits(nets, x, stage):
    with torch.no_grad():
        features = nets["backbone"](x)
        if nets["block"] is not None:
            features = nets["block"](features)
        logits = nets["classifier"](features)
        return nets["lws"](logits) if stage == 2 else logits



def torchvision_resnet152_state_dict(seed):
    """What `torch.save(torchvision.models.resnet152(weights=...).state_dict(), FILE)` holds: the full [3, 8, 36, 3]
    network with `fc` (1000 classes) and no `num_batches_tracked` (torchvision's published files have none)."""
    network = randomize(RefResNet((3, 8, 36, 3), pool=False), seed)
    calibrate_batch_norm([network], 64, seed)
    state = dict(network.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    return network, {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}



@pytest.fixture
def cifar_checkpoint(reference_nets):
    """A stage-2 CIFAR-10-LT checkpoint whose tensors the test may change (copies, not the shared nets')."""
    nets = reference_nets("resnet32")
    return copy.deepcopy(reference_checkpoint(nets["backbone"], nets["classifier"], lws=nets["lws"]))


@pytest.fixture(name="reference_checkpoint", scope="session")
def reference_checkpoint_fixture():
    """``reference_checkpoint(backbone, classifier, lws=None, block=None)``: the dict train_stage1/2.py save."""
    return reference_checkpoint


@pytest.fixture(name="save_like_reference", scope="session")
def save_like_reference_fixture():
    """``save_like_reference(checkpoint, path)``: `torch.save` as torch 1.2 with numpy 1.x did; returns `path`."""
    return save_like_reference


@pytest.fixture(name="reference_logits", scope="session")
def reference_logits_fixture():
    """``reference_logits(nets, x, stage)``: the reference forward of `reference_nets(arch)`."""
    return reference_logits


@pytest.fixture(name="torchvision_resnet152_state_dict", scope="session")
def torchvision_resnet152_state_dict_fixture():
    """``torchvision_resnet152_state_dict(seed)``: a random full ResNet-152 and its torchvision state dict."""
    return torchvision_resnet152_state_dict


@pytest.fixture(scope="session")
def ref_resnet():
    """The class `RefResNet(layers, pool=True)`: torchvision-layout bottleneck ResNet (reference `ResNet_FE`)."""
    return RefResNet


@pytest.fixture(scope="session")
def ref_bottleneck():
    """The class `RefBottleneck(inplanes, planes, stride=1, downsample=None)`: torchvision's Bottleneck (v1.5)."""
    return RefBottleneck


# ----------------------------------------------------------------------------------------------------------------
# Quick training runs whose saved models the jobs on a saved model take (tests/scripts/test_evaluate.py,
# tests/scripts/test_calibrate.py): each trained once per session, with a hold-out and its data options recorded.
# ----------------------------------------------------------------------------------------------------------------

QUICK_STAGE1_FLAGS = [
    "--stage", "1", "--max_steps", "10", "--learning_rate", "0.02", "--mixup_alpha", "0", "--seed", "0",
    "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--dataloader_num_workers", "0",
    "--save_strategy", "no", "--report_to", "none", "--logging_steps", "5",
]
"""Stage 1 for 10 steps at a learning rate that keeps a barely trained ResNet-32 better than chance on held-out
images (a temperature then has a finite optimum)."""
OWN_DATA_IMAGES = {"airplane": (120, 5, 4), "automobile": (30, 5, 4), "frog": (60, 5, 4)}
"""`own_data_run`: per class (a CIFAR-10 class name), the images of its `train/`, `test/` and `other_test/` folders."""


@pytest.fixture(scope="session")
def own_data_run(cifar10_dir, tmp_path_factory):
    """A stage-1 ResNet-32 trained on your own data (no --dataset): imagefolders of real CIFAR-10 PNGs written here,
    `DATA/train` and `DATA/test` (`OWN_DATA_IMAGES`; the test images come from CIFAR-10's test split) with a 20 %
    hold-out and Many > 50 >= Medium >= 30 > Few; `DATA/other_test` holds other test images of the same classes.
    Returns (run folder, DATA); the model is `RUN/stage1`."""
    import pyarrow.parquet as pq

    from mislas_hf.data import BENCHMARKS
    from mislas_hf.scripts.arguments import parse_arguments
    from mislas_hf.scripts.train import train

    names = BENCHMARKS["cifar10-lt"].class_names
    data_dir = tmp_path_factory.mktemp("own_data")
    for split, parquet, first, which in (("train", "train", 0, 0), ("test", "test", 0, 1), ("other_test", "test", 5, 2)):
        rows = next(pq.ParquetFile(cifar10_dir / f"{parquet}-00000-of-00001.parquet").iter_batches(batch_size=3000))
        by_class = {}
        for image, label in zip(rows.column("img").to_pylist(), rows.column("label").to_pylist()):
            by_class.setdefault(names[label], []).append(image["bytes"])
        for name, numbers in OWN_DATA_IMAGES.items():
            (data_dir / split / name).mkdir(parents=True)
            for index, png in enumerate(by_class[name][first : first + numbers[which]]):
                (data_dir / split / name / f"{index:03d}.png").write_bytes(png)
    output_dir = tmp_path_factory.mktemp("own_data_run")
    train(*parse_arguments([
        "--train_dir", str(data_dir / "train"), "--test_dir", str(data_dir / "test"),
        "--validation_split_percentage", "20", "--many_shot_threshold", "50", "--few_shot_threshold", "30",
        "--output_dir", str(output_dir), *QUICK_STAGE1_FLAGS,
    ])[:3])
    return output_dir, data_dir


@pytest.fixture(scope="session")
def cifar10_lt_run(cifar10_dir, tmp_path_factory):
    """A stage-1 ResNet-32 trained on CIFAR-10-LT IF 100 (recipes/configs/cifar10_lt_if100.yaml, the local copy of
    CIFAR-10 as --dataset_name) with a 2 % hold-out (250 images), 400 training and 200 test images. Returns the run
    folder; the model is `RUN/stage1`."""
    from mislas_hf.scripts.arguments import parse_arguments
    from mislas_hf.scripts.train import train

    output_dir = tmp_path_factory.mktemp("cifar10_lt_run")
    train(*parse_arguments([
        "--config", str(REPO_ROOT / "recipes/configs/cifar10_lt_if100.yaml"), "--dataset_name", str(cifar10_dir),
        "--validation_split_percentage", "2", "--max_train_samples", "400", "--max_eval_samples", "200",
        "--output_dir", str(output_dir), *QUICK_STAGE1_FLAGS,
    ])[:3])
    return output_dir


# ----------------------------------------------------------------------------------------------------------------
# A saved model as a user without mislas_hf loads it: from a Hub-layout cache, offline, with trust_remote_code
# ----------------------------------------------------------------------------------------------------------------

HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"

WITHOUT_PACKAGE_SCRIPT = """
import importlib.abc, json, sys

class RefuseMislasHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mislas_hf" or name.startswith("mislas_hf."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, RefuseMislasHf())
try:
    import mislas_hf
    sys.exit("mislas_hf is importable in the process that should not have it")
except ModuleNotFoundError:
    pass

import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

repo_id, image_path, pixels_path, out_path = sys.argv[1:5]
model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(torch.load(pixels_path)).logits
classifier = pipeline("image-classification", model=repo_id, trust_remote_code=True)
predictions = classifier(Image.open(image_path), top_k=model.config.num_labels)
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "mislas_hf")
with open(out_path, "w") as handle:
    json.dump({"logits": logits.tolist(), "predictions": predictions, "model_module": type(model).__module__,
               "mislas_hf_modules": loaded}, handle)
"""


def save_to_hub_cache(model, processor, cache, repo_id):
    """`model` and its image `processor` saved in `cache` as huggingface_hub stores a download of `repo_id`
    (`models--ORG--NAME/refs/main` naming revision `HUB_REVISION`, files under `snapshots/<revision>/`)."""
    repo_folder = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    model.save_pretrained(repo_folder / "snapshots" / HUB_REVISION)
    processor.save_pretrained(repo_folder / "snapshots" / HUB_REVISION)
    (repo_folder / "refs").mkdir(exist_ok=True)
    (repo_folder / "refs" / "main").write_text(HUB_REVISION)
    return repo_folder / "snapshots" / HUB_REVISION


def load_without_package(cache, repo_id, image_path, pixel_values_path, work_dir):
    """Logits (of the tensor saved at `pixel_values_path`) and pipeline predictions (of the image at `image_path`)
    of `repo_id` in the Hub-layout `cache`, from a fresh interpreter that cannot import mislas_hf, offline, through
    AutoModelForImageClassification and pipeline("image-classification") with trust_remote_code; checks that the
    model class came from the repo's code files and that no mislas_hf module was loaded."""
    import json
    import subprocess
    import sys

    work_dir = Path(work_dir)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTHON", "TRANSFORMERS"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HOME=str(work_dir / "hf_home"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    out_path = work_dir / f"without_package_{repo_id.replace('/', '--')}.json"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PACKAGE_SCRIPT, repo_id, str(image_path), str(pixel_values_path), str(out_path)],
        cwd=work_dir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(out_path.read_text())
    assert outputs["mislas_hf_modules"] == []
    assert outputs["model_module"].startswith("transformers_modules.")  # the code files shipped in the repo
    return outputs


@pytest.fixture(name="save_to_hub_cache", scope="session")
def save_to_hub_cache_fixture():
    """``save_to_hub_cache(model, processor, cache, repo_id)``: a model folder laid out as a Hub download."""
    return save_to_hub_cache


@pytest.fixture(name="load_without_package", scope="session")
def load_without_package_fixture():
    """``load_without_package(cache, repo_id, image_path, pixel_values_path, work_dir)``: logits and pipeline
    predictions of a cached repo, from a process without mislas_hf (trust_remote_code, offline)."""
    return load_without_package



# ----------------------------------------------------------------------------------------------------------------
# Tiny random checkpoints of transformers vision models, the backbones of issue 23 (tests/test_backbones.py,
# tests/scripts/test_train_backbones.py): each saved once per session as a user's `--model_name_or_path` folder.
# ----------------------------------------------------------------------------------------------------------------

def _tiny_vision_model_and_processor(kind):
    """A tiny seeded model of `kind` (its image classifier, or for CLIP the whole text + vision model) and the image
    processor saved with it (32x32 model inputs)."""
    from transformers import (
        BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, ConvNextConfig, ConvNextForImageClassification,
        ConvNextImageProcessor, Dinov2Config, Dinov2ForImageClassification, EfficientNetConfig,
        EfficientNetForImageClassification, EfficientNetImageProcessor, SwinConfig, SwinForImageClassification,
        ViTConfig, ViTForImageClassification, ViTImageProcessor,
    )

    torch.manual_seed(0)
    square = {"height": 32, "width": 32}
    transformer = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    if kind == "vit":
        return (ViTForImageClassification(ViTConfig(intermediate_size=32, num_labels=5, **transformer)),
                ViTImageProcessor(size=square, image_mean=[0.5] * 3, image_std=[0.5] * 3))
    if kind == "convnext":
        config = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, patch_size=4, num_labels=5)
        return ConvNextForImageClassification(config), ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    if kind == "dinov2":
        return (Dinov2ForImageClassification(Dinov2Config(mlp_ratio=2, num_labels=5, **transformer)),
                BitImageProcessor(size={"shortest_edge": 36}, crop_size=square))
    if kind == "clip":
        text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
        vision = dict(intermediate_size=32, **transformer)
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
        return CLIPModel(config), CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=square)
    if kind == "swin":
        config = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4,
                            num_labels=5)
        return SwinForImageClassification(config), ViTImageProcessor(size=square)
    if kind == "efficientnet":
        config = EfficientNetConfig(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320,
                                    num_labels=5)
        return (EfficientNetForImageClassification(config),
                EfficientNetImageProcessor(size=square, crop_size=square, resample=2))  # bilinear
    if kind == "timm":
        import timm

        return timm.create_model("test_efficientnet"), None
    raise ValueError(f"no tiny vision checkpoint of kind {kind!r}")


def _informative_weights(model):
    """Kaiming-normal (fan-in) convolutions and BN scales near 1, so that the features of a deep random network still
    depend on its input (EfficientNet's initialisation, normal(0, 0.02) for both, makes them vanish), and BN biases and
    running statistics moved off their initial 0 / 1, so that eval-mode batch norm is not an identity."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model


@pytest.fixture(scope="session")
def tiny_vision_checkpoint(tmp_path_factory):
    """``tiny_vision_checkpoint(kind)``: the folder of a tiny random checkpoint, saved once per session as
    `save_pretrained` writes it, with its image processor: `vit`, `convnext`, `dinov2`, `swin`, `efficientnet` (their
    `*ForImageClassification`, 5 ImageNet-style labels), `clip` (a whole `CLIPModel`, text tower included) and
    `timm` (timm's `test_efficientnet`, 1000 classes, in the Hub layout of timm models, written by `mislas_hf.convert.convert_timm`
    from its state dict; its processor is its `pretrained_cfg`, 160 px)."""
    folders = {}

    def get(kind):
        if kind not in folders:
            folder = tmp_path_factory.mktemp(f"tiny_{kind}")
            model, processor = _tiny_vision_model_and_processor(kind)
            _informative_weights(model)
            if kind == "timm":
                from mislas_hf.convert import convert_timm

                torch.save(model.state_dict(), folder / "state_dict.pth")
                folder = convert_timm(folder / "state_dict.pth", "test_efficientnet", folder / "hub")
            else:
                model.save_pretrained(folder)
                processor.save_pretrained(folder)
            folders[kind] = folder
        return folders[kind]

    return get
