"""mislas_hf.convert: official MiSLAS checkpoints -> save_pretrained folders.

The checkpoints are synthetic but laid out exactly as the reference's train_stage1/2.py save them: backbones built
here as small re-implementations of the reference forward (CIFAR ResNet-32 with option-A shortcuts; torchvision-layout
bottleneck ResNets), wrapped in DataParallel (keys `module.`), random weights and BN statistics, `its_ece` a numpy
float pickled as numpy 1.x does, legacy (torch 1.2) file format. Converted logits must match the reference forward.
"""

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.convert import convert, convert_backbone, labels_from_train_list, main
from mislas_hf.run import parse_arguments, train

REPO_ROOT = Path(__file__).resolve().parents[1]
from mislas_hf.data import reference_class_order

# ----------------------------------------------------------------------------------------------------------------
# Reference networks (re-implemented from the reference's forward; parameter names as in its state dicts)
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


# ----------------------------------------------------------------------------------------------------------------
# Per-architecture set-ups: reference modules and the reference forward
# ----------------------------------------------------------------------------------------------------------------

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


@pytest.mark.parametrize(
    "arch, stage",
    [(arch, stage) for arch in ("resnet32", "resnet50", "resnet152_places+block") for stage in (1, 2)]
    + [("resnet101", 2)],  # same code path as resnet50: one stage; iNat: the processor test below
)
def test_converted_model_reproduces_reference_logits(tmp_path, reference_nets, arch, stage):
    nets = reference_nets(arch)
    checkpoint = reference_checkpoint(
        nets["backbone"], nets["classifier"], lws=nets["lws"] if stage == 2 else None, block=nets["block"]
    )
    path = save_like_reference(checkpoint, tmp_path / "model_best.pth.tar")
    output_dir = tmp_path / "converted"
    train_list = None
    if arch == "resnet50" and stage == 2:  # ImageNet-LT with its training list: original ids kept in id2label
        train_list = tmp_path / "ImageNet_LT_train.txt"
        counts = [1 + (7 * k) % 13 for k in range(1000)]  # many ties
        train_list.write_text("".join(f"train/n{k:08d}/{i}.JPEG {k}\n" for k in range(1000) for i in range(counts[k])))
    convert(path, nets["dataset"], stage, output_dir, train_list=train_list)

    model = MislasForImageClassification.from_pretrained(output_dir).eval()
    assert model.config.backbone == arch.removeprefix("inat-").removesuffix("+block")
    x = torch.randn(2, 3, nets["size"], nets["size"], generator=torch.Generator().manual_seed(6))
    expected = reference_logits(nets, x, stage)
    with torch.no_grad():
        logits = model(x).logits
    assert expected.std() > 0.05  # the comparison is not between near-constant outputs
    assert (logits - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()

    # the head holds W = fc.weight, ΔW = 0 and s = learned_norm (1 in stage 1)
    head = model.classifier
    assert torch.equal(head.weight, nets["classifier"].fc.weight)
    assert torch.equal(head.delta_weight, torch.zeros_like(head.delta_weight))
    scale = nets["lws"].learned_norm[0] if stage == 2 else torch.ones_like(head.scale)
    assert torch.equal(head.scale, scale)
    assert model.config.stage == stage
    assert model.config.head_mode == ("mislas" if stage == 2 else "linear")
    card = (output_dir / "README.md").read_text()
    if arch == "resnet50" and stage == 2:
        order = [int(model.config.id2label[k][len("orig_"):]) for k in range(1000)]
        assert sorted(order) == list(range(1000))
        assert model.config.class_counts == [counts[original] for original in order]
        assert model.config.class_counts == sorted(counts, reverse=True)
        assert "label `orig_<id>` gives its id in the official split lists" in card
    elif arch != "resnet32":
        assert model.config.id2label[0] == "class_0" and model.config.class_counts is None
        assert "labels are `class_<k>` and the original class ids are unknown" in card
    assert sorted(os.listdir(output_dir)) == [
        "README.md", "config.json", "configuration_mislas.py", "model.safetensors", "modeling_mislas.py",
        "preprocessor_config.json",
    ]
    assert not [name for name in os.listdir(tmp_path) if "converting" in name]  # no staging folder left behind


def test_places_model_is_resnet152_without_layer4_2_plus_a_default_initialised_block():
    """The reference's Places-LT network: resnet152_fe ([3, 8, 36, 2], 53.7 M parameters with the stem) and a new
    torchvision Bottleneck(2048, 512) with PyTorch's default initialisation (kaiming-uniform, a = sqrt(5): uniform on
    +-1/sqrt(fan_in), std 1/sqrt(3 fan_in)), where the frozen backbone has torchvision's kaiming-normal fan-out."""
    torch.manual_seed(0)
    model = MislasForImageClassification(
        MislasConfig(backbone="resnet152_places", num_labels=365, extra_block=True, freeze_backbone=True)
    )
    reference = RefResNet((3, 8, 36, 2), pool=False)
    backbone = model.mislas.pretrained_backbone()
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in reference.parameters())
    assert not any(p.requires_grad for p in backbone.parameters())
    block = model.mislas.extra_block
    assert sum(p.numel() for p in block.parameters()) == sum(p.numel() for p in RefBottleneck(2048, 512).parameters())
    for conv, fan_in in zip([layer.convolution for layer in block.layer], (2048, 512 * 9, 512)):
        weight = conv.weight.detach()
        assert weight.abs().max() <= fan_in**-0.5
        assert weight.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.03)
    last_conv = model.mislas.encoder.resnet_encoder.stages[3].layers[1].layer[2].convolution.weight.detach()
    assert last_conv.std().item() == pytest.approx((2 / 2048) ** 0.5, rel=0.03)  # kaiming-normal, fan_out = 2048
    norm = block.layer[0].normalization
    assert torch.equal(norm.weight, torch.ones(512)) and torch.equal(norm.bias, torch.zeros(512))


def test_inat_processor_and_logits_match_the_reference_evaluation_pipeline(tmp_path, reference_nets):
    """A converted iNaturalist 2018 checkpoint, fed through its saved image processor, gives the logits of the
    reference's evaluation pipeline (datasets/ina2018.py: Resize(256), CenterCrop(224), ToTensor, Normalize with
    mean (0.466, 0.471, 0.380), std (0.195, 0.194, 0.192)) and forward. A 256x256 image makes the resize an identity,
    so the crop is rows/columns 16..239."""
    nets = reference_nets("inat-resnet50")
    checkpoint = reference_checkpoint(nets["backbone"], nets["classifier"], lws=nets["lws"])
    convert(save_like_reference(checkpoint, tmp_path / "ckpt.pth.tar"), "inat2018", 2, tmp_path / "out")
    rgb = np.random.default_rng(7).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    crop = torch.from_numpy(rgb[16:240, 16:240]).permute(2, 0, 1).double() / 255
    mean = torch.tensor([0.466, 0.471, 0.380], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.195, 0.194, 0.192], dtype=torch.float64)[:, None, None]
    expected = reference_logits(nets, ((crop - mean) / std).float()[None], stage=2)

    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    pixel_values = processor(Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    assert expected.std() > 0.05
    assert (logits - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def torchvision_resnet152_state_dict(seed):
    """What `torch.save(torchvision.models.resnet152(weights=...).state_dict(), FILE)` holds: the full [3, 8, 36, 3]
    network with `fc` (1000 classes) and no `num_batches_tracked` (torchvision's published files have none)."""
    network = randomize(RefResNet((3, 8, 36, 3), pool=False), seed)
    calibrate_batch_norm([network], 64, seed)
    state = dict(network.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    return network, {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}


def test_torchvision_resnet152_becomes_the_places_lt_stage1_start(tmp_path):
    """`--backbone_checkpoint`: the torchvision ResNet-152 minus fc and layer4.2 (as resnet_places._resnet_fe deletes
    them), so the converted backbone's feature map is that of the full network after layer4.1; training from the
    folder initialises the extra block and classifier itself (PyTorch-default block, ImageNet processor)."""
    network, state = torchvision_resnet152_state_dict(seed=11)
    torch.save(state, tmp_path / "resnet152.pth")
    assert main(["--backbone_checkpoint", str(tmp_path / "resnet152.pth"), "--dataset", "places-lt",
                 "--output_dir", str(tmp_path / "start")]) == 0

    model = MislasForImageClassification.from_pretrained(tmp_path / "start", num_labels=365).eval()
    assert model.config.backbone == "resnet152_places"
    assert model.config.extra_block and model.config.freeze_backbone
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        stem = network.maxpool(F.relu(network.bn1(network.conv1(x))))
        expected = network.layer4[:2](network.layer3(network.layer2(network.layer1(stem))))  # layer4.2 dropped
        features = model.mislas.encoder(model.mislas.embedder(x))[0]
    assert (features - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    conv = model.mislas.extra_block.layer[0].convolution.weight  # initialised on loading, not taken from layer4.2
    assert conv.abs().max() <= 2048**-0.5
    processor = json.loads((tmp_path / "start/preprocessor_config.json").read_text())
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_places_recipe_refuses_to_freeze_a_random_backbone(tmp_path):
    """recipes/configs/places_lt_r152.yaml without --model_name_or_path would freeze random weights."""
    flags = ["--config", str(REPO_ROOT / "recipes/configs/places_lt_r152.yaml"), "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match=r"freeze_backbone needs pretrained weights.*--backbone_checkpoint FILE"):
        train(*parse_arguments(flags)[:3])
    assert not any(tmp_path.iterdir())


def test_torchvision_state_dict_of_another_network_is_rejected(tmp_path):
    state = RefResNet((3, 4, 6, 3)).state_dict()  # a ResNet-50 given for Places-LT's ResNet-152
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "resnet.pth")
    with pytest.raises(
        ValueError,
        match=r"not a torchvision resnet152 state dict \(missing keys: layer2\.4\.conv1\.weight, .*; "
        r"unexpected keys: layer5\.0\.conv1\.weight\)",
    ):
        convert_backbone(tmp_path / "resnet.pth", "places-lt", tmp_path / "start")
    assert not (tmp_path / "start").exists()


@pytest.fixture
def cifar_checkpoint(reference_nets):
    """A stage-2 CIFAR-10-LT checkpoint whose tensors the test may change (copies, not the shared nets')."""
    nets = reference_nets("resnet32")
    return copy.deepcopy(reference_checkpoint(nets["backbone"], nets["classifier"], lws=nets["lws"]))


def test_cifar_config_records_profile_names_and_groups(tmp_path, cifar_checkpoint):
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    assert main(["--checkpoint", str(path), "--dataset", "cifar10-lt", "--stage", "2", "--output_dir",
                 str(tmp_path / "out"), "--imbalance_factor", "100"]) == 0
    config = MislasForImageClassification.from_pretrained(tmp_path / "out").config
    # int(5000 * 0.01 ** (c / 9)) for c = 0..9
    assert config.class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert config.class_group_boundaries == [3, 7]
    assert config.id2label[0] == "airplane" and config.id2label[9] == "truck"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "best_acc1 = 82.12%" in card and "its_ece = 3.69%" in card  # from the checkpoint, labelled as such
    assert "| Top-1 accuracy (%) | 82.10 |" in card  # the paper's Table 4 number, in the paper's table
    assert ModelCard.load(tmp_path / "out" / "README.md").data.eval_results is None  # nothing measured yet


def _assert_rejected(tmp_path, path, match, **kwargs):
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        convert(path, kwargs.pop("dataset", "cifar10-lt"), kwargs.pop("stage", 2), output_dir, **kwargs)
    assert not output_dir.exists()
    assert not [name for name in os.listdir(tmp_path) if "converting" in name]


def test_missing_key_is_named(tmp_path, cifar_checkpoint):
    del cifar_checkpoint["state_dict_model"]["module.layer2.3.bn1.running_var"]
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"missing keys: state_dict_model: layer2\.3\.bn1\.running_var")


def test_unexpected_key_is_named(tmp_path, cifar_checkpoint):
    cifar_checkpoint["state_dict_model"]["module.layer4.0.conv1.weight"] = torch.zeros(8, 8, 3, 3)
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"unexpected keys: state_dict_model: layer4\.0\.conv1\.weight")


def test_shape_mismatch_is_named(tmp_path, cifar_checkpoint):
    cifar_checkpoint["state_dict_classifier"]["module.fc.weight"] = torch.zeros(10, 32)
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"state_dict_classifier: fc\.weight has shape \[10, 32\], expected \[10, 64\]")


def test_non_finite_tensor_is_named(tmp_path, cifar_checkpoint):
    cifar_checkpoint["state_dict_model"]["module.layer3.4.bn2.running_var"][7] = float("nan")
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"state_dict_model: layer3\.4\.bn2\.running_var holds NaN or inf")


def test_wrong_class_count_for_dataset_is_rejected(tmp_path, cifar_checkpoint):
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"fc\.weight has shape \[10, 64\], expected \[100, 64\]", dataset="cifar100-lt")


def test_stage_mismatch_is_explained(tmp_path, cifar_checkpoint):
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"unexpected section 'state_dict_lws_model' \(a stage-2 checkpoint", stage=1)


def test_not_a_dict_is_rejected(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    torch.save([torch.zeros(3)], path)
    _assert_rejected(tmp_path, path, r"holds a list, not the dict")


class RunsCodeWhenUnpickled:
    """Unpickling calls Path.touch(marker): what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_pickled_code_is_never_run(tmp_path, cifar_checkpoint):
    marker = tmp_path / "code_ran"
    cifar_checkpoint["optimizer"] = RunsCodeWhenUnpickled(marker)
    path = tmp_path / "ckpt.pth.tar"
    torch.save(cifar_checkpoint, path)
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=r"cannot be read with torch\.load\(weights_only=True\).*Unsupported global"):
        convert(path, "cifar10-lt", 2, output_dir)
    assert not marker.exists()
    assert not output_dir.exists()


def test_failure_while_writing_leaves_nothing(tmp_path, cifar_checkpoint, monkeypatch):
    import mislas_hf.convert as convert_module

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "write_model_card", fail)  # after the weights were written
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    with pytest.raises(OSError, match="disk full"):
        convert(path, "cifar10-lt", 2, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar"]


def test_existing_output_dir_is_kept(tmp_path, cifar_checkpoint, capsys):
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["--checkpoint", str(path), "--dataset", "cifar10-lt", "--stage", "2", "--output_dir",
                 str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["notes.txt"]


# ----------------------------------------------------------------------------------------------------------------
# Class order of list-file benchmarks: numpy 1.19's unstable argsort, as the reference ran it
# ----------------------------------------------------------------------------------------------------------------


def test_short_sorts_are_insertion_sorts_hence_stable():
    # <= 16 elements: numpy's introsort is a plain insertion sort, so ties keep their index order
    values = [-3, -5, -3, -1, -5, -3]
    assert reference_class_order(values) == [1, 4, 0, 2, 5, 3]


# Outputs of np.argsort(-counts) under numpy 1.24.4 (same introsort as 1.19), computed outside this test suite.
TIED_COUNTS = [5, 3, 5, 1, 3, 5, 2, 2, 5, 3, 1, 4, 4, 5, 2, 3, 1, 4, 5, 2]
TIED_REFERENCE_ORDER = [0, 2, 13, 5, 8, 18, 17, 12, 11, 15, 9, 4, 1, 7, 6, 14, 19, 3, 16, 10]
PLACES_LT_REFERENCE_ORDER = [
    7, 9, 12, 19, 24, 42, 45, 48, 52, 62, 66, 67, 81, 82, 84, 86, 90, 91, 94, 97, 106, 110, 121, 132, 150, 151, 154,
    164, 171, 175, 183, 192, 203, 204, 205, 214, 215, 217, 220, 224, 232, 243, 245, 257, 252, 266, 271, 272, 278,
    279, 284, 288, 299, 307, 312, 313, 317, 323, 324, 326, 330, 334, 337, 342, 344, 345, 355, 4, 319, 258, 15, 0,
    277, 357, 341, 268, 163, 209, 361, 348, 76, 286, 40, 18, 182, 283, 29, 292, 244, 305, 118, 254, 301, 157, 193,
    153, 109, 360, 30, 309, 293, 273, 122, 125, 38, 290, 134, 49, 78, 79, 57, 77, 117, 259, 35, 142, 270, 108, 2,
    231, 304, 306, 308, 8, 127, 199, 223, 140, 58, 362, 310, 149, 194, 112, 221, 181, 59, 39, 17, 103, 107, 197,
    314, 249, 43, 349, 26, 32, 356, 69, 276, 226, 85, 120, 238, 13, 123, 3, 141, 27, 136, 63, 353, 213, 147, 161,
    287, 152, 105, 33, 21, 104, 113, 338, 180, 44, 315, 99, 95, 144, 31, 119, 176, 92, 251, 275, 359, 227, 158, 250,
    212, 115, 269, 274, 186, 167, 234, 54, 143, 239, 210, 25, 233, 236, 200, 98, 206, 321, 265, 328, 237, 263, 190,
    333, 340, 22, 216, 87, 60, 230, 138, 350, 352, 320, 74, 354, 53, 303, 184, 179, 61, 16, 202, 316, 124, 47, 297,
    289, 189, 11, 89, 20, 285, 102, 145, 41, 281, 130, 267, 174, 146, 178, 329, 96, 73, 260, 5, 148, 10, 101, 347,
    325, 133, 280, 71, 80, 253, 165, 116, 156, 225, 327, 240, 6, 196, 218, 131, 114, 336, 191, 65, 242, 36, 139,
    173, 296, 358, 187, 1, 70, 364, 162, 55, 185, 311, 72, 298, 318, 247, 211, 28, 335, 177, 208, 229, 219, 282,
    343, 228, 241, 159, 264, 291, 51, 256, 363, 64, 339, 201, 198, 170, 246, 14, 235, 322, 207, 332, 50, 83, 300,
    302, 75, 294, 34, 331, 169, 166, 172, 262, 261, 168, 255, 160, 68, 129, 111, 248, 46, 346, 155, 23, 135, 351,
    222, 295, 137, 188, 93, 100, 56, 37, 128, 88, 195, 126,
]


def test_reference_order_matches_numpy_1_19_on_ties():
    assert reference_class_order([-c for c in TIED_COUNTS]) == TIED_REFERENCE_ORDER
    assert TIED_REFERENCE_ORDER != sorted(range(20), key=lambda k: -TIED_COUNTS[k])  # not the stable order


def test_train_list_gives_reference_ids_and_counts(tmp_path):
    lines = [f"train/c{label:02d}/{i}.jpg {label}" for label, count in enumerate(TIED_COUNTS) for i in range(count)]
    train_list = tmp_path / "train.txt"
    train_list.write_text("\n".join(lines[::-1]) + "\n")
    counts, id2label = labels_from_train_list(train_list, 20)
    assert counts == [TIED_COUNTS[k] for k in TIED_REFERENCE_ORDER]
    assert id2label == {k: f"orig_{original}" for k, original in enumerate(TIED_REFERENCE_ORDER)}


def test_places_lt_class_order_matches_the_reference(splits_dir):
    counts, id2label = labels_from_train_list(splits_dir / "Places_LT_train.txt", 365)
    assert [int(id2label[k][len("orig_"):]) for k in range(365)] == PLACES_LT_REFERENCE_ORDER
    assert counts[0] == 4980 and counts[-1] == 5 and sum(counts) == 62500


def test_convert_pushes_the_converted_folder(tmp_path, reference_nets, hub_uploads):
    nets = reference_nets("resnet32")
    checkpoint = reference_checkpoint(nets["backbone"], nets["classifier"], lws=nets["lws"], block=None)
    path = save_like_reference(checkpoint, tmp_path / "model_best.pth.tar")
    output_dir = convert(path, "cifar10-lt", 2, tmp_path / "converted", push_to_hub="mislas-org/converted")
    pushes = [upload for upload in hub_uploads if upload["repo_id"] == "mislas-org/converted"]
    assert [upload["call"] for upload in pushes] == ["create_repo", "create_commit"]
    on_disk = {p.relative_to(output_dir).as_posix(): p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    assert pushes[1]["files"] == on_disk and "model.safetensors" in on_disk and "README.md" in on_disk
    assert pushes[1]["message"] == "Convert official MiSLAS CIFAR-10-LT stage-2 checkpoint"
    assert "mislas-org/converted" in on_disk["README.md"].decode()
