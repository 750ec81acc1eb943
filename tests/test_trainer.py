"""MislasTrainer's hooks: the stage losses, optimizer groups and schedule, what stage 2 keeps for backward, the
on-device batch augmentation, and bf16 autocast."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.trainer import MislasTrainer, multistep_schedule_with_warmup
from mislas_hf.training_args import MislasTrainingArguments

CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def tiny_trainer(tmp_path, stage, **overrides):
    torch.manual_seed(0)
    model = MislasForImageClassification(MislasConfig(num_labels=10, class_counts=CIFAR10_LT_COUNTS))
    args = MislasTrainingArguments(output_dir=str(tmp_path), stage=stage, report_to="none", **overrides)
    return MislasTrainer(model=model, args=args)


def test_stage1_loss_is_the_mixup_loss(tmp_path):
    trainer = tiny_trainer(tmp_path, "1", mixup_alpha=1.0)
    model = trainer.model.train()
    pixels, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    torch.manual_seed(123)
    loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels})
    # replay the same draws: a 63-bit seed from torch's generator feeds numpy's Beta; then the permutation
    torch.manual_seed(123)
    seed = int(torch.randint(0, 2**63 - 1, (1,)).item())
    lam = float(np.random.default_rng(seed).beta(1.0, 1.0))
    permutation = torch.randperm(8)
    mixed_logits = model(lam * pixels + (1 - lam) * pixels[permutation]).logits
    expected = lam * F.cross_entropy(mixed_logits, labels) + (1 - lam) * F.cross_entropy(mixed_logits, labels[permutation])
    assert 0 < lam < 1
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    plain = F.cross_entropy(model(pixels).logits, labels)
    assert abs(loss.item() - plain.item()) > 1e-3  # the inputs really were mixed


def test_stage2_loss_is_label_aware_smoothing_and_optimizer_groups(tmp_path):
    trainer = tiny_trainer(tmp_path, "2", smooth_head=0.3, smooth_tail=0.0, delta_lr_ratio=0.5, learning_rate=0.1)
    model = trainer.model
    logits_input = torch.randn(6, 3, 32, 32)
    labels = torch.tensor([0, 9, 4, 4, 1, 7])
    loss = trainer.compute_loss(model, {"pixel_values": logits_input, "labels": labels})
    log_probs = model(logits_input).logits.float().log_softmax(-1)
    counts = torch.tensor(CIFAR10_LT_COUNTS, dtype=torch.float64)
    eps = (0.3 * torch.sin(math.pi * (counts - 50) / (2 * (5000 - 50)))).float()  # Eq. (3.a), eps_K = 0
    eps_y = eps[labels]
    expected = ((1 - eps_y) * -log_probs[torch.arange(6), labels] + eps_y * -log_probs.mean(-1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    optimizer = trainer.create_optimizer()
    groups = {tuple(sorted(id(p) for p in g["params"])): g for g in optimizer.param_groups}
    head = model.classifier
    assert groups[tuple(sorted([id(head.delta_weight), id(head.bias)]))]["lr"] == pytest.approx(0.05)
    assert groups[(id(head.scale),)]["lr"] == pytest.approx(0.1)
    assert all(g["weight_decay"] == 2e-4 and g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_multistep_schedule_matches_the_reference_epochs():
    # 200 epochs x 10 steps: 5 warm-up epochs, x0.1 after epoch 160, x0.01 after epoch 180
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = multistep_schedule_with_warmup(optimizer, warmup_steps=50, milestones=[1600, 1800], factor=0.1)
    factors = {step: schedule.lr_lambdas[0](step) for step in (0, 25, 50, 1599, 1600, 1799, 1800, 1999)}
    assert factors == pytest.approx({0: 0, 25: 0.5, 50: 1, 1599: 1, 1600: 0.1, 1799: 0.1, 1800: 0.01, 1999: 0.01})



def saved_for_backward(trainer, pixels, labels):
    """The non-parameter tensors autograd saves for the backward pass of one training loss."""
    parameters = {p.data_ptr() for p in trainer.model.parameters()}
    saved = []

    def pack(tensor):
        if tensor.data_ptr() not in parameters:
            saved.append(tensor)
        return tensor

    model = trainer.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels}).backward()
    return saved


def test_stage2_keeps_no_backbone_activation_for_backward_and_still_shifts_bn(tmp_path):
    pixels, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    stage1 = saved_for_backward(tiny_trainer(tmp_path, "1"), pixels, labels)
    trainer = tiny_trainer(tmp_path, "2")
    batch_norms = [m for m in trainer.model.mislas.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    means = [m.running_mean.clone() for m in batch_norms]
    stage2 = saved_for_backward(trainer, pixels, labels)
    assert sum(t.dim() == 4 for t in stage1) >= 31  # each of ResNet-32's 31 convolutions keeps its input
    assert [tuple(t.shape) for t in stage2 if t.dim() > 2] == []  # nothing of the frozen backbone
    assert sum(t.numel() for t in stage2) <= 16 * (64 + 4 * 10)  # features into the head, a few [16, 10] logits
    assert all(not torch.equal(m.running_mean, mean) for m, mean in zip(batch_norms, means))  # shifted BN


def test_channels_last_batch_augmentation_and_saved_weights(tmp_path):
    from mislas_hf.data import augment_cifar_batch

    torch.manual_seed(0)
    config = MislasConfig(num_labels=10, class_counts=CIFAR10_LT_COUNTS)
    reference = MislasForImageClassification(config)
    model = MislasForImageClassification(config)
    model.load_state_dict(reference.state_dict())
    args = MislasTrainingArguments(output_dir=str(tmp_path), stage="1", report_to="none", mixup_alpha=0)
    trainer = MislasTrainer(model=model, args=args, batch_augmentation=augment_cifar_batch)
    conv = trainer.model.mislas.embedder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8)
    torch.manual_seed(5)
    prepared = trainer._prepare_inputs({"pixel_values": images, "labels": labels})
    torch.manual_seed(5)
    expected = augment_cifar_batch(images, train=True)
    assert torch.equal(prepared["pixel_values"], expected)
    assert prepared["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert trainer._prepare_inputs(prepared)["pixel_values"] is prepared["pixel_values"]  # idempotent
    loss = trainer.compute_loss(trainer.model.train(), prepared)
    assert loss.item() == pytest.approx(F.cross_entropy(reference.train()(expected).logits, labels).item(), rel=1e-5)
    trainer.model.eval()
    evaluated = trainer._prepare_inputs({"pixel_values": images, "labels": labels})["pixel_values"]
    assert torch.equal(evaluated, augment_cifar_batch(images, train=False))  # evaluation: normalisation only
    trainer.save_model(str(tmp_path / "saved"))
    saved = load_file(tmp_path / "saved/model.safetensors")
    for name, value in trainer.model.state_dict().items():
        assert saved[name].is_contiguous() and torch.equal(saved[name], value), name
    plain = MislasTrainer(model=reference, args=args)
    with pytest.raises(ValueError, match="batch_augmentation"):
        plain._prepare_inputs({"pixel_values": images, "labels": labels})



def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(
    torch.accelerator.is_available() or not Path("/proc/cpuinfo").is_file(), reason="reads a Linux CPU's flags"
)
def test_bf16_defaults_to_on_exactly_where_the_cpu_has_bf16_instructions(tmp_path):
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert MislasTrainingArguments(output_dir=str(tmp_path)).bf16 is native
    assert MislasTrainingArguments(output_dir=str(tmp_path), bf16=False).bf16 is False
    assert MislasTrainingArguments(output_dir=str(tmp_path), bf16=True).bf16 is True


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks bf16 on a machine without an accelerator")
def test_bf16_on_a_cpu_autocasts_the_model_and_keeps_the_loss_in_float32(tmp_path):
    trainer = tiny_trainer(tmp_path, "2", bf16=True)  # the Trainer alone would ask for use_cpu
    assert trainer.args.use_cpu and trainer.accelerator.mixed_precision == "bf16"
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 9, 9])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what Accelerate wraps the model's forward in
        loss, outputs = trainer.compute_loss(trainer.model, {"pixel_values": pixels, "labels": labels}, True)
    assert loss.dtype == torch.float32
    expected = trainer.criterion(outputs.logits.double(), labels)  # the same logits, in float64
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        full_precision = trainer.model(pixels).logits
    difference = (outputs.logits - full_precision).abs().max().item()
    assert 0 < difference < 0.05 * full_precision.abs().max().item()  # the forward really ran in bf16
