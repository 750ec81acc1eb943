"""MislasTrainer.train() on a tiny synthetic long-tailed set (4 classes, 8x8 images, no augmentation): the stage-2
losses, the multistep schedule, gradient accumulation and the non-finite-loss stop, each against a value computed
here from the formulas (no real data, a few seconds each)."""

import copy
import math

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.sampling import ClassAwareSampler
from mislas_hf.trainer import MislasTrainer
from mislas_hf.training_args import MislasTrainingArguments

COUNTS = [24, 12, 6, 3]  # 45 images: 6 batches of 8 per epoch (the last one of 5)
LABELS = [label for label, count in enumerate(COUNTS) for _ in range(count)]


@pytest.fixture(scope="module")
def toy_set():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(len(LABELS), 3, 8, 8, generator=generator)
    pixels += torch.tensor(LABELS, dtype=torch.float32)[:, None, None, None] / 2  # learnable, a little
    dataset = datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "label": LABELS})
    return dataset.with_format("torch"), pixels


def new_model() -> MislasForImageClassification:
    torch.manual_seed(0)
    return MislasForImageClassification(MislasConfig(backbone="resnet32", num_labels=4, class_counts=COUNTS))


def toy_trainer(tmp_path, dataset, stage, model=None, **overrides):
    arguments = dict(
        output_dir=str(tmp_path), stage=stage, report_to="none", per_device_train_batch_size=8, save_strategy="no",
        logging_steps=1, use_cpu=True, bf16=False, seed=0, mixup_alpha=0.0, shift_bn=False,
    )
    args = MislasTrainingArguments(**{**arguments, **overrides})
    return MislasTrainer(model=model if model is not None else new_model(), args=args, train_dataset=dataset)


def spy_on_training_losses(monkeypatch):
    """Record (labels, pixel values, loss) of every training-mode `compute_loss` call."""
    calls = []
    compute_loss = MislasTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training:
            calls.append((inputs["labels"].clone(), inputs["pixel_values"].clone(), loss.item()))
        return loss

    monkeypatch.setattr(MislasTrainer, "compute_loss", recording)
    return calls


@pytest.mark.parametrize("stage2_loss", ["ce", "cb_ce"])
def test_stage2_loss_through_the_trainer_is_the_hand_computed_one(tmp_path, toy_set, monkeypatch, stage2_loss):
    dataset, pixels = toy_set
    model = new_model()
    initial = copy.deepcopy(model).eval()  # stage 2 starts from these logits (s = 1, ΔW = 0, BN frozen)
    calls = spy_on_training_losses(monkeypatch)
    toy_trainer(tmp_path, dataset, "2", model, stage2_loss=stage2_loss, per_device_train_batch_size=16,
                max_steps=1).train()
    (labels, batch_pixels, loss), = calls
    # the first batch is the first 16 indices of the class-aware stream: four classes, four images each
    first = list(ClassAwareSampler(LABELS, seed=0))[:16]
    assert labels.tolist() == [LABELS[i] for i in first] and sorted(set(labels.tolist())) == [0, 1, 2, 3]
    assert torch.equal(batch_pixels, pixels[first])
    with torch.no_grad():
        log_probabilities = initial(pixels[first]).logits.double().log_softmax(-1)
    nll = -log_probabilities[torch.arange(16), labels]
    # Cui et al. (2019): weight 1 / E_n with effective number E_n = (1 - beta^n) / (1 - beta), beta = 0.9999, the
    # weights scaled to sum to K = 4; the loss is the weighted mean sum_i w_yi nll_i / sum_i w_yi
    effective = [(1 - 0.9999**n) / (1 - 0.9999) for n in COUNTS]
    weights = torch.tensor([1 / e for e in effective], dtype=torch.float64)
    weights = 4 * weights / weights.sum()
    expected = {
        "ce": nll.mean().item(),
        "cb_ce": ((weights[labels] * nll).sum() / weights[labels].sum()).item(),
    }
    assert weights.tolist() == pytest.approx([4 / 15, 8 / 15, 16 / 15, 32 / 15], abs=1e-3)  # ~ 1 / n, rescaled
    assert loss == pytest.approx(expected[stage2_loss], rel=1e-5)
    other = expected["cb_ce" if stage2_loss == "ce" else "ce"]
    assert abs(loss - other) > 1e-3 * abs(other)  # the two losses really differ on this batch


class LearningRates(TrainerCallback):
    """The LR of the first parameter group at each optimizer step (the one that step uses)."""

    def __init__(self):
        self.rates = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append(optimizer.param_groups[0]["lr"])


def test_multistep_schedule_converts_epochs_to_steps_of_the_run(tmp_path, toy_set):
    dataset, _ = toy_set
    trainer = toy_trainer(tmp_path, dataset, "1", num_train_epochs=4, lr_decay_epochs=[2, 3], lr_decay_factor=0.1,
                          warmup_steps=2, learning_rate=0.1, gradient_accumulation_steps=2)
    rates = LearningRates()
    trainer.add_callback(rates)
    trainer.train()
    # an epoch is ceil(45 / 8) = 6 batches, i.e. 3 optimizer steps of 2 accumulated batches; the LR drops x0.1
    # once 2 epochs' and again once 3 epochs' steps are done, after 2 linear warm-up steps from 0
    steps_per_epoch = math.ceil(45 / 8) // 2
    milestones = [2 * steps_per_epoch, 3 * steps_per_epoch]
    expected = [0.1 * (step / 2 if step < 2 else 0.1 ** sum(step >= m for m in milestones))
                for step in range(4 * steps_per_epoch)]
    assert rates.rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert expected[milestones[0] - 1 : milestones[0] + 1] == pytest.approx([0.1, 0.01])


def test_gradient_accumulation_equals_the_doubled_batch(tmp_path, toy_set):
    """Stage 2 with frozen BN (shift_bn false; with shifted BN the batch statistics of half batches would differ):
    two accumulated batches of 8 give the weights of batches of 16, as both read the same class-aware stream. Two
    steps of full batches: the epoch's last, partial batch would be weighted as a whole micro-batch (the loss is a
    per-batch mean divided by the accumulation steps), so 8 + 5 images do not average like 13."""
    dataset, _ = toy_set
    heads = {}
    for batch_size, accumulation in ((16, 1), (8, 2)):
        trainer = toy_trainer(tmp_path / str(batch_size), dataset, "2", per_device_train_batch_size=batch_size,
                              gradient_accumulation_steps=accumulation, max_steps=2, learning_rate=0.01)
        trainer.train()
        heads[batch_size] = {k: v.detach().clone() for k, v in trainer.model.classifier.state_dict().items()}
    start = new_model().classifier.state_dict()
    assert (heads[16]["scale"] - start["scale"]).abs().min() > 0.01  # the head did move
    for name in ("scale", "delta_weight", "bias"):
        torch.testing.assert_close(heads[8][name], heads[16][name], rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_at_its_step_and_keeps_the_earlier_checkpoint(tmp_path, toy_set, monkeypatch):
    dataset, _ = toy_set
    clean = toy_trainer(tmp_path / "clean", dataset, "1", max_steps=2, lr_scheduler_type="constant")
    clean.train()
    weights_after_2_steps = {k: v.detach().clone() for k, v in clean.model.state_dict().items()}

    compute_loss, calls = MislasTrainer.compute_loss, []

    def nan_at_step_3(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training:
            calls.append(1)
            if len(calls) == 3:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(MislasTrainer, "compute_loss", nan_at_step_3)
    output_dir = tmp_path / "nan"
    trainer = toy_trainer(output_dir, dataset, "1", max_steps=6, save_strategy="steps", save_steps=2,
                          lr_scheduler_type="constant")
    with pytest.raises(FloatingPointError, match="training loss became nan at step 3"):
        trainer.train()
    assert len(calls) == 3  # nothing ran after the NaN step
    assert sorted(p.name for p in output_dir.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert not (output_dir / "model.safetensors").exists()
    saved = load_file(output_dir / "checkpoint-2/model.safetensors")
    for name, value in weights_after_2_steps.items():
        assert torch.isfinite(saved[name].float()).all() and torch.equal(saved[name], value), name
