"""mislas_hf.reference_checkpoints: what the official MiSLAS checkpoints and torchvision state dicts hold and how it
maps onto our model; every mismatch is named, nothing is unpickled, nothing is written (checked through
`mislas_hf.convert.convert`, which must leave no folder behind). Then the class order of the list-file benchmarks.

The checkpoints and reference networks come from tests/conftest.py (`cifar_checkpoint`, `save_like_reference`,
`ref_resnet`, `ref_bottleneck`).
"""

import os

import pytest
import torch

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.convert import convert, convert_backbone
from mislas_hf.data import reference_class_order
from mislas_hf.reference_checkpoints import labels_from_train_list


def test_places_model_is_resnet152_without_layer4_2_plus_a_default_initialised_block(ref_resnet, ref_bottleneck):
    """The reference's Places-LT network: resnet152_fe ([3, 8, 36, 2], 53.7 M parameters with the stem) and a new
    torchvision Bottleneck(2048, 512) with PyTorch's default initialisation (kaiming-uniform, a = sqrt(5): uniform on
    +-1/sqrt(fan_in), std 1/sqrt(3 fan_in)), where the frozen backbone has torchvision's kaiming-normal fan-out."""
    torch.manual_seed(0)
    model = MislasForImageClassification(
        MislasConfig(backbone="resnet152_places", num_labels=365, extra_block=True, freeze_backbone=True)
    )
    reference = ref_resnet((3, 8, 36, 2), pool=False)
    backbone = model.mislas.pretrained_backbone()
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in reference.parameters())
    assert not any(p.requires_grad for p in backbone.parameters())
    block = model.mislas.extra_block
    assert sum(p.numel() for p in block.parameters()) == sum(p.numel() for p in ref_bottleneck(2048, 512).parameters())
    for conv, fan_in in zip([layer.convolution for layer in block.layer], (2048, 512 * 9, 512)):
        weight = conv.weight.detach()
        assert weight.abs().max() <= fan_in**-0.5
        assert weight.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.03)
    last_conv = model.mislas.encoder.resnet_encoder.stages[3].layers[1].layer[2].convolution.weight.detach()
    assert last_conv.std().item() == pytest.approx((2 / 2048) ** 0.5, rel=0.03)  # kaiming-normal, fan_out = 2048
    norm = block.layer[0].normalization
    assert torch.equal(norm.weight, torch.ones(512)) and torch.equal(norm.bias, torch.zeros(512))


def test_torchvision_state_dict_of_another_network_is_rejected(tmp_path, ref_resnet):
    state = ref_resnet((3, 4, 6, 3)).state_dict()  # a ResNet-50 given for Places-LT's ResNet-152
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "resnet.pth")
    with pytest.raises(
        ValueError,
        match=r"not a torchvision resnet152 state dict \(missing keys: layer2\.4\.conv1\.weight, .*; "
        r"unexpected keys: layer5\.0\.conv1\.weight\)",
    ):
        convert_backbone(tmp_path / "resnet.pth", "places-lt", tmp_path / "start")
    assert not (tmp_path / "start").exists()


def _assert_rejected(tmp_path, path, match, **kwargs):
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        convert(path, kwargs.pop("dataset", "cifar10-lt"), kwargs.pop("stage", 2), output_dir, **kwargs)
    assert not output_dir.exists()
    assert not [name for name in os.listdir(tmp_path) if "converting" in name]


def test_missing_key_is_named(tmp_path, cifar_checkpoint, save_like_reference):
    del cifar_checkpoint["state_dict_model"]["module.layer2.3.bn1.running_var"]
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"missing keys: state_dict_model: layer2\.3\.bn1\.running_var")


def test_unexpected_key_is_named(tmp_path, cifar_checkpoint, save_like_reference):
    cifar_checkpoint["state_dict_model"]["module.layer4.0.conv1.weight"] = torch.zeros(8, 8, 3, 3)
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"unexpected keys: state_dict_model: layer4\.0\.conv1\.weight")


def test_shape_mismatch_is_named(tmp_path, cifar_checkpoint, save_like_reference):
    cifar_checkpoint["state_dict_classifier"]["module.fc.weight"] = torch.zeros(10, 32)
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"state_dict_classifier: fc\.weight has shape \[10, 32\], expected \[10, 64\]")


def test_non_finite_tensor_is_named(tmp_path, cifar_checkpoint, save_like_reference):
    cifar_checkpoint["state_dict_model"]["module.layer3.4.bn2.running_var"][7] = float("nan")
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"state_dict_model: layer3\.4\.bn2\.running_var holds NaN or inf")


def test_wrong_class_count_for_dataset_is_rejected(tmp_path, cifar_checkpoint, save_like_reference):
    path = save_like_reference(cifar_checkpoint, tmp_path / "ckpt.pth.tar")
    _assert_rejected(tmp_path, path, r"fc\.weight has shape \[10, 64\], expected \[100, 64\]", dataset="cifar100-lt")


def test_stage_mismatch_is_explained(tmp_path, cifar_checkpoint, save_like_reference):
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
