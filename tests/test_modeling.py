"""MislasConfig / MislasForImageClassification: parameter counts, Eq. (4) head modes, shifted BN, save/load."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForImageClassification

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.modeling_resnet_backbones import MislasCifarBasicBlock

CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def cifar_model(**overrides) -> MislasForImageClassification:
    torch.manual_seed(0)
    config = MislasConfig(backbone="resnet32", num_labels=10, class_counts=CIFAR10_LT_COUNTS, **overrides)
    return MislasForImageClassification(config)


def backbone_parameter_count(model) -> int:
    return sum(parameter.numel() for name, parameter in model.named_parameters() if not name.startswith("classifier"))


def test_resnet32_has_the_published_parameter_count():
    # He et al. 2016, Table 6: ResNet-32 has 0.46 M parameters. Counted by hand: stem 3*16*9 + BN 32 = 464;
    # each stage has 5 blocks of two 3x3 convs + 2 BNs (with the first conv of stages 2 and 3 taking the
    # previous width as input); option-A shortcuts have no parameters.
    stem = 3 * 16 * 9 + 2 * 16
    stage1 = 5 * (2 * 16 * 16 * 9 + 4 * 16)
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 4 * 32) + 4 * (2 * 32 * 32 * 9 + 4 * 32)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 4 * 64) + 4 * (2 * 64 * 64 * 9 + 4 * 64)
    model = cifar_model()
    assert backbone_parameter_count(model) == stem + stage1 + stage2 + stage3 == 463_504
    # head: W [10, 64], b [10], s [10], ΔW [10, 64]
    head = sum(parameter.numel() for parameter in model.classifier.parameters())
    assert head == 2 * 10 * 64 + 2 * 10


def test_resnet50_features_match_torchvision_resnet50():
    # torchvision.models.resnet50() has 25,557,032 parameters, of which fc is 2048 * 1000 + 1000.
    model = MislasForImageClassification(MislasConfig(backbone="resnet50", num_labels=1000))
    assert backbone_parameter_count(model) == 25_557_032 - (2048 * 1000 + 1000)


def test_option_a_shortcut_pads_zero_channels_after_subsampling():
    torch.manual_seed(0)
    block = MislasCifarBasicBlock(16, 32, stride=2).eval()
    x = torch.randn(2, 16, 8, 8)
    expected_shortcut = torch.cat([torch.zeros(2, 8, 4, 4), x[:, :, ::2, ::2], torch.zeros(2, 8, 4, 4)], dim=1)
    assert torch.equal(block.shortcut(x), expected_shortcut)
    residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    assert torch.allclose(block(x), F.relu(residual + expected_shortcut))


def test_hidden_states_follow_transformers_resnet_convention():
    model = cifar_model().eval()
    outputs = model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    # stem output, then one per stage; the last is the feature map before pooling
    assert [tuple(h.shape[1:]) for h in outputs.hidden_states] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
    pooled = outputs.hidden_states[-1].mean(dim=(2, 3))
    head = model.classifier
    assert torch.allclose(outputs.logits, head.scale * (pooled @ head.weight.T + head.bias), atol=1e-5)


def test_labels_give_cross_entropy():
    model = cifar_model().eval()
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 9, 9])
    outputs = model(pixels, labels=labels)
    log_probs = outputs.logits.log_softmax(-1)
    assert outputs.loss.item() == pytest.approx(-log_probs[torch.arange(4), labels].mean().item(), rel=1e-6)


def _random_head_state(model):
    with torch.no_grad():
        model.classifier.scale.copy_(torch.rand(10) + 0.5)
        model.classifier.delta_weight.copy_(torch.randn(10, 64) * 0.1)
        model.classifier.bias.copy_(torch.randn(10))


@pytest.mark.parametrize(
    "head_mode, trainable, retention",
    [
        ("linear", {"weight", "bias"}, 1.0),
        ("crt", {"delta_weight", "bias"}, 0.0),
        ("lws", {"scale"}, 1.0),
        ("mislas", {"scale", "delta_weight", "bias"}, 1.0),
    ],
)
def test_head_modes_are_special_cases_of_eq4(head_mode, trainable, retention):
    model = cifar_model()
    model.prepare_stage2(head_mode=head_mode, shift_bn=False)
    _random_head_state(model)
    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable_names == {f"classifier.{name}" for name in trainable}
    head = model.classifier
    x = torch.randn(5, 64)
    expected = head.scale * (x @ (retention * head.weight + head.delta_weight).T + head.bias)
    assert torch.allclose(head(x), expected, atol=1e-6)
    if head_mode == "crt":  # r = 0: only ΔW and b matter, W is ignored
        assert torch.allclose(head(x), head.scale * (x @ head.delta_weight.T + head.bias), atol=1e-6)
    assert model.config.head_mode == head_mode and model.config.stage == 2


def test_logits_are_float32_under_bf16_autocast():
    model = cifar_model().eval()
    _random_head_state(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(torch.randn(4, 3, 32, 32), output_hidden_states=True)
        features = torch.randn(5, 64).bfloat16()
        logits = model.classifier(features)
    assert outputs.hidden_states[-1].dtype == torch.bfloat16 and outputs.logits.dtype == torch.float32
    head = model.classifier
    weight = (head.weight + head.delta_weight).double()  # r = 1
    expected = head.scale * (features.double() @ weight.T + head.bias.double())  # Eq. (4), float64
    assert logits.dtype == torch.float32
    assert torch.allclose(logits.double(), expected, atol=1e-5)  # a bf16 product is off by ~1e-2 here


@pytest.mark.parametrize(
    "cast, dtype, tolerance",
    [
        (lambda model: model.double(), torch.float64, 1e-5),
        (lambda model: model.half(), torch.float16, 5e-2),
        (lambda model: model.to(torch.bfloat16), torch.bfloat16, 3e-1),
    ],
)
def test_a_cast_model_runs_in_its_dtype_end_to_end(cast, dtype, tolerance):
    model = cifar_model().eval()
    _random_head_state(model)
    pixel_values = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(pixel_values).logits.double()
        outputs = cast(model)(pixel_values.to(dtype), labels=torch.tensor([0, 1, 2, 3]))
    assert outputs.logits.dtype == dtype and outputs.loss.dtype == torch.float32
    assert (outputs.logits.double() - reference).abs().max().item() < tolerance * reference.abs().max().item()


def test_from_pretrained_in_half_precision_runs_in_half_precision(tmp_path):
    model = cifar_model().eval()
    _random_head_state(model)
    model.save_pretrained(tmp_path)
    pixel_values = torch.randn(2, 3, 32, 32)
    reloaded = MislasForImageClassification.from_pretrained(tmp_path, dtype=torch.float16).eval()
    assert reloaded.classifier.weight.dtype == torch.float16
    with torch.no_grad():
        reference = model(pixel_values).logits
        logits = reloaded(pixel_values.half()).logits
    assert logits.dtype == torch.float16
    assert (logits.float() - reference).abs().max().item() < 5e-2 * reference.abs().max().item()


def test_stage2_starts_from_the_stage1_classifier():
    # Eq. (4) at the start of stage 2: s = 1 and ΔW = 0, so the logits are the stage-1 linear classifier W f + b on
    # the pooled features, computed here from the hidden states and the stage-1 weights saved before the switch.
    model = cifar_model().eval()
    stage1_weight, stage1_bias = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()
    pixels = torch.randn(3, 3, 32, 32)
    model.prepare_stage2("mislas", shift_bn=True)
    model.eval()
    with torch.no_grad():
        outputs = model(pixels, output_hidden_states=True)
    features = outputs.hidden_states[-1].double().mean(dim=(2, 3))
    expected = features @ stage1_weight.double().T + stage1_bias.double()
    assert torch.equal(model.classifier.scale.detach(), torch.ones(10))
    assert torch.equal(model.classifier.delta_weight.detach(), torch.zeros(10, 64))
    torch.testing.assert_close(outputs.logits.double(), expected, atol=1e-5, rtol=1e-5)  # float32 sums of ~1e2


def _bn_layers(model):
    return [m for m in model.mislas.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("shift_bn", [True, False])
def test_shifted_bn_updates_statistics_only(shift_bn):
    model = cifar_model()
    model.prepare_stage2("mislas", shift_bn=shift_bn)
    backbone_before = {k: v.clone() for k, v in model.mislas.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    for _ in range(2):
        model.train()  # Trainer calls this at every step
        assert all(bn.training == shift_bn for bn in _bn_layers(model))
        loss = model(torch.randn(8, 3, 32, 32) * 3 + 1, labels=torch.arange(8) % 10).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.mislas.state_dict()
    for name, value in after.items():
        moved = not torch.equal(value, backbone_before[name])
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert moved == shift_bn, name
        else:  # conv weights, BN affine weight/bias
            assert not moved, name
    assert all(not p.requires_grad for p in model.mislas.parameters())


def test_freeze_backbone_keeps_pretrained_stages_in_eval_mode():
    config = MislasConfig(backbone="resnet10", num_labels=5, extra_block=True, freeze_backbone=True)
    model = MislasForImageClassification(config)
    model.train()
    assert not model.mislas.embedder.training and not model.mislas.encoder.training
    assert model.mislas.extra_block.training
    trainable = {name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"extra_block", "weight", "bias"}


def test_save_and_load_round_trip(tmp_path):
    model = cifar_model(id2label={i: f"class_{i}" for i in range(10)})
    model.prepare_stage2("mislas", shift_bn=True)
    _random_head_state(model)
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    pixels = torch.randn(2, 3, 32, 32)
    reloaded = MislasForImageClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(pixels).logits, model(pixels).logits)
    assert reloaded.config.class_counts == CIFAR10_LT_COUNTS
    assert reloaded.config.head_mode == "mislas" and reloaded.config.stage == 2
    auto = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(auto) is MislasForImageClassification
    assert torch.equal(auto(pixels).logits, model(pixels).logits)
    assert AutoConfig.from_pretrained(tmp_path).id2label[3] == "class_3"
    assert reloaded.config.label2id["class_3"] == 3  # derived from id2label


def test_temperature_divides_the_eq4_logits_and_survives_save_and_load(tmp_path):
    model = cifar_model()
    _random_head_state(model)
    model.eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        raw = model(pixels).logits
        assert model.config.temperature == 1.0  # default: no scaling
        model.config.temperature = 2.5
        scalar = model(pixels).logits
        class_temperatures = torch.linspace(0.5, 3.0, 10)
        model.config.temperature = class_temperatures.tolist()
        classwise = model(pixels, labels=torch.tensor([0, 4, 9]))
    assert torch.allclose(scalar, raw / 2.5, rtol=1e-6, atol=0)
    assert torch.allclose(classwise.logits, raw / class_temperatures, rtol=1e-6, atol=0)
    assert classwise.loss.item() == pytest.approx(F.cross_entropy(raw / class_temperatures, torch.tensor([0, 4, 9])).item(), rel=1e-6)
    model.save_pretrained(tmp_path)
    reloaded = MislasForImageClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.temperature == pytest.approx(class_temperatures.tolist())
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).logits, classwise.logits)
    reloaded.prepare_stage2("lws", shift_bn=False)  # a new head voids the temperature fit to the old one
    assert reloaded.config.temperature == 1.0 and reloaded.config.calibration is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": [1.0, 2.0]}, "temperature"),
        ({"temperature": [1.0] * 9 + [float("inf")]}, "temperature"),
        ({"backbone": "resnet200"}, "backbone"),
        ({"few_shot_threshold": 120}, "few_shot_threshold"),
        ({"class_counts": [5, 4, 3]}, "class_counts"),
        ({"class_counts": [5, 4, 3, 2, 1, 1, 1, 1, 1, -1]}, "class_counts"),
        ({"head_mode": "tau-norm"}, "head_mode"),
        ({"class_group_boundaries": [7, 3]}, "class_group_boundaries"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MislasConfig(num_labels=10, **kwargs)


def test_unknown_head_mode_in_prepare_stage2():
    with pytest.raises(ValueError, match="head_mode"):
        cifar_model().prepare_stage2("tau-norm")
