"""MislasTrainingArguments and MislasTrainer: the two stages of MiSLAS as hooks on transformers' Trainer.

Stage 1 (representation learning): instance-balanced sampling, mixup (Sec. 3.1), the whole network trains.
Stage 2 (classifier learning): class-balanced sampling, label-aware smoothing (Sec. 3.2, Eqs. 1-3), frozen backbone
with shifted BN statistics (Sec. 3.3) and the scaled-shift head of Eq. (4).

Everything else (loop, logging, checkpointing and resume, mixed precision, gradient accumulation, distributed
training) is the Trainer's own.
"""

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback, TrainingArguments

from .calibration import compute_metrics as calibration_compute_metrics
from .data import dataset_labels
from .losses import ClassBalancedCrossEntropy, LabelAwareSmoothingLoss, mixup_batch, mixup_loss
from .modeling_mislas import TRAINABLE_HEAD_PARAMETERS
from .sampling import ClassAwareSampler

STAGE2_LOSSES = ("las", "ce", "cb_ce")
SMOOTHING_SHAPES = ("concave", "linear", "convex", "exp")


def native_bf16_available(use_cpu: bool = False) -> bool:
    """Whether bf16 autocast runs on bf16 hardware here, i.e. is faster than float32 rather than emulated: a CUDA GPU
    with native bf16 (Ampere or newer), or, without an accelerator or with `use_cpu`, a CPU with AVX512-BF16 or AMX
    (oneDNN then computes convolutions in bf16). Other accelerators: False (opt in with `bf16=True`)."""
    if not use_cpu and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if not use_cpu and torch.accelerator.is_available():
        return False
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@dataclass
class MislasTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the knobs of MiSLAS (defaults: CIFAR-10-LT, imbalance factor 100, Table 6).

    The optimizer is SGD with momentum 0.9 (Sec. 4.1.2) and weight decay applied to every trainable parameter, BN
    and biases included, as the reference implementation does.
    """

    stage: str = field(
        default="both",
        metadata={"help": "1, 2, or both (stage 1 then stage 2 from its final weights).", "choices": ["1", "2", "both"]},
    )
    stage1_epochs: float = field(default=200, metadata={"help": "Stage-1 epochs (Table 6)."})
    stage2_epochs: float = field(default=10, metadata={"help": "Stage-2 epochs (Table 6)."})
    lr_decay_epochs: list[float] | None = field(
        default=None,
        metadata={
            "help": "Stage-1 multistep schedule: epochs after which the LR is multiplied by lr_decay_factor (the "
            "reference uses 160 180 of 200 on CIFAR). Unset: lr_scheduler_type (cosine) is used. Stage 2 is cosine."
        },
    )
    lr_decay_factor: float = field(default=0.1, metadata={"help": "Multistep LR factor per milestone."})
    mixup_alpha: float = field(
        default=1.0, metadata={"help": "Beta(alpha, alpha) of stage-1 mixup (Sec. 3.1); 0 disables mixup."}
    )
    stage2_loss: str = field(
        default="las",
        metadata={
            "help": "Stage-2 loss: las (label-aware smoothing, Eq. 1), ce, or cb_ce (class-balanced CE, Table 2).",
            "choices": list(STAGE2_LOSSES),
        },
    )
    smooth_head: float = field(default=0.3, metadata={"help": "epsilon_1 of Eq. (3), for the largest class."})
    smooth_tail: float = field(default=0.0, metadata={"help": "epsilon_K of Eq. (3), for the smallest class."})
    smoothing_shape: str = field(
        default="concave",
        metadata={"help": "Related function f of Eq. (3.a-c) or (7).", "choices": list(SMOOTHING_SHAPES)},
    )
    smoothing_power: float | None = field(default=None, metadata={"help": "p of the exponential form, Eq. (7)."})
    shift_bn: bool = field(default=True, metadata={"help": "Update BN running statistics in stage 2 (Sec. 3.3)."})
    head_mode: str = field(
        default="mislas",
        metadata={"help": "Stage-2 head (Eq. 4): mislas, crt, lws, or linear.", "choices": list(TRAINABLE_HEAD_PARAMETERS)},
    )
    delta_lr_ratio: float = field(
        default=0.5, metadata={"help": "LR ratio of ΔW and b to the base LR in stage 2 (Table 6, ΔW column)."}
    )
    samples_per_class: int = field(
        default=4, metadata={"help": "Consecutive images drawn per class by the stage-2 class-aware sampler."}
    )
    label_column: str = field(default="label", metadata={"help": "Label column of the training set."})
    channels_last: bool = field(
        default=True,
        metadata={
            "help": "Run the convolutions in channels-last memory format (weights and pixel values): faster on CPUs "
            "(oneDNN) and on GPUs with tensor cores. Saved weights are ordinary contiguous safetensors."
        },
    )
    # Trainer defaults that MiSLAS changes
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 autocast (Accelerate's mixed_precision='bf16'). Unset: on where the hardware computes in "
            "bf16 natively (see native_bf16_available), off otherwise and when fp16 is set. The classifier's logits "
            "stay float32 either way.",
            "nargs": "?",  # a bare --bf16 means true, as for the Trainer's other flags
            "const": True,
        },
    )
    learning_rate: float = field(default=0.1, metadata={"help": "Base LR of SGD (Table 6)."})
    weight_decay: float = field(default=2e-4, metadata={"help": "Weight decay (Table 6)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Stage-1 schedule when lr_decay_epochs is unset."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Batch size per device (Table 6)."})
    total_train_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Global training batch, over all processes and gradient accumulation steps (Table 6's batch "
            "size). When set, per_device_train_batch_size = total_train_batch_size / (processes x "
            "gradient_accumulation_steps), which must divide it; the learning rate is not rescaled."
        },
    )
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "Evaluation batch size per device."})
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Gradient clipping norm; 0 (no clipping) as in the reference implementation."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: images are decoded by the dataset's transform."}
    )
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Kept False so that a NaN loss stops training instead of being hidden."}
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16 and native_bf16_available(self.use_cpu)
        if self.bf16 and not torch.accelerator.is_available():
            # The Trainer allows bf16 autocast on a CPU only with use_cpu, which changes nothing else on a machine
            # without an accelerator.
            self.use_cpu = True
        super().__post_init__()
        if self.total_train_batch_size is not None:
            shares = self.world_size * self.gradient_accumulation_steps
            if self.total_train_batch_size % shares:
                raise ValueError(
                    f"total_train_batch_size={self.total_train_batch_size} does not split into {self.world_size} "
                    f"processes x {self.gradient_accumulation_steps} gradient accumulation steps: choose a multiple "
                    f"of {shares} or another --gradient_accumulation_steps."
                )
            self.per_device_train_batch_size = self.total_train_batch_size // shares
        if not 0 <= self.smooth_tail <= self.smooth_head <= 0.5:
            raise ValueError(
                f"smooth_head={self.smooth_head} and smooth_tail={self.smooth_tail} must satisfy "
                "0 <= smooth_tail <= smooth_head <= 0.5 (paper, Sec. 4.2)."
            )
        if self.smoothing_shape == "exp" and self.smoothing_power is None:
            raise ValueError("smoothing_shape='exp' needs smoothing_power (p of Eq. 7).")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha={self.mixup_alpha} must be >= 0 (0 disables mixup).")
        if self.delta_lr_ratio < 0:
            raise ValueError(f"delta_lr_ratio={self.delta_lr_ratio} must be >= 0.")
        if self.lr_decay_epochs is not None and list(self.lr_decay_epochs) != sorted(self.lr_decay_epochs):
            raise ValueError(f"lr_decay_epochs={self.lr_decay_epochs} must be increasing.")


class StopOnNonFiniteLoss(TrainerCallback):
    """Stops training with a clear error when the logged training loss is NaN or infinite."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"The training loss became {loss} at step {state.global_step}: lower --learning_rate, check the "
                "data, or disable --fp16. Checkpoints already saved in output_dir are kept."
            )


def multistep_schedule_with_warmup(optimizer, warmup_steps: int, milestones: list[int], factor: float) -> LambdaLR:
    """Linear warm-up from 0, then the LR multiplied by `factor` after each milestone step (the reference's CIFAR
    stage-1 schedule: 5 warm-up epochs, x0.1 at epochs 160 and 180 of 200, Sec. 4.1.2)."""

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return factor ** bisect.bisect_right(milestones, step)

    return LambdaLR(optimizer, lr_lambda)


class DeviceBatchTrainer(Trainer):
    """A `Trainer` whose `_prepare_inputs` finishes raw uint8 image batches on their device (the GPU when there is
    one): `batch_augmentation(pixel_values, train)` turns a collated uint8 batch into the model's float input,
    `data.augment_imagenet_batch` (in training colour jitter, then normalisation) for `make_transform("imagenet",
    ...)`, `data.augment_cifar_batch` for a split made by `data.decode_cifar_images`. `MislasTrainer` is one; the
    float32 evaluation of a saved model (`run.float32_evaluation_trainer`) is a plain one."""

    def __init__(self, *args, batch_augmentation: Callable[[torch.Tensor, bool], torch.Tensor] | None = None, **kwargs):
        self.batch_augmentation = batch_augmentation
        super().__init__(*args, **kwargs)

    def _prepare_inputs(self, inputs: dict) -> dict:
        """The Trainer's device placement, then: a raw uint8 image batch goes through `batch_augmentation` on its
        device (in training the random part left to the device, in evaluation normalisation only), and with
        `channels_last` the pixel values are made channels-last. Idempotent: a prepared batch passes through."""
        inputs = super()._prepare_inputs(inputs)
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None:
            return inputs
        if pixel_values.dtype == torch.uint8:
            if self.batch_augmentation is None:
                raise ValueError(
                    "The batch holds raw uint8 images (make_transform('imagenet', ...), or a split made by "
                    "decode_cifar_images with InMemoryCifarTransform(train=True)): pass the trainer "
                    "batch_augmentation=augment_imagenet_batch or batch_augmentation=augment_cifar_batch."
                )
            pixel_values = self.batch_augmentation(pixel_values, self.model.training)
        if getattr(self.args, "channels_last", False) and pixel_values.dim() == 4:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        inputs["pixel_values"] = pixel_values
        return inputs


class MislasTrainer(DeviceBatchTrainer):
    """Trainer for one MiSLAS stage (`args.stage` is "1" or "2"); the model must be a
    `MislasForImageClassification` whose `config.class_counts` describe the training set.

    Hooks: `compute_loss` (mixup in stage 1; label-aware smoothing in stage 2), `_get_train_sampler` (class-aware
    sampler in stage 2), `create_optimizer` (SGD; stage-2 groups {ΔW, b} at `delta_lr_ratio` x LR and {s} at LR),
    `create_scheduler` (multistep with warm-up), `_prepare_inputs` (`batch_augmentation` of raw uint8 image batches on
    their device, channels-last pixel values). Evaluation logs accuracy, Many/Medium/Few, ECE, MCE and NLL.

    `batch_augmentation`: see `DeviceBatchTrainer`.
    """

    # compute_loss returns a per-batch mean: training_step must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model=None,
        args: MislasTrainingArguments = None,
        compute_metrics=None,
        batch_augmentation: Callable[[torch.Tensor, bool], torch.Tensor] | None = None,
        **kwargs,
    ):
        if args.stage not in ("1", "2"):
            raise ValueError(f"MislasTrainer runs one stage at a time: args.stage must be '1' or '2', not {args.stage!r}.")
        config = model.config
        if config.class_counts is None:
            raise ValueError("model.config.class_counts is unset: set it to the training set's images per class.")
        if compute_metrics is None:
            compute_metrics = calibration_compute_metrics(
                class_counts=config.class_counts,
                class_group_boundaries=config.class_group_boundaries,
                many_threshold=config.many_shot_threshold,
                few_threshold=config.few_shot_threshold,
            )
        if args.stage == "2":
            model.prepare_stage2(head_mode=args.head_mode, shift_bn=args.shift_bn)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        super().__init__(
            model=model, args=args, compute_metrics=compute_metrics, batch_augmentation=batch_augmentation, **kwargs
        )
        self.add_callback(StopOnNonFiniteLoss())
        self.criterion = self._build_criterion(config.class_counts)

    @property
    def stage(self) -> int:
        return int(self.args.stage)

    def _build_criterion(self, class_counts) -> torch.nn.Module:
        if self.stage == 1 or self.args.stage2_loss == "ce":
            return torch.nn.CrossEntropyLoss()
        if self.args.stage2_loss == "cb_ce":
            return ClassBalancedCrossEntropy(class_counts)
        return LabelAwareSmoothingLoss(
            class_counts,
            smooth_head=self.args.smooth_head,
            smooth_tail=self.args.smooth_tail,
            shape=self.args.smoothing_shape,
            power=self.args.smoothing_power,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Stage 1 in training: mixup, `lam * CE(y_a) + (1 - lam) * CE(y_b)`. Otherwise the stage's criterion
        (cross-entropy in stage 1; label-aware smoothing, CE or CB-CE in stage 2). Returns the batch mean."""
        labels = inputs["labels"]
        pixel_values = inputs["pixel_values"]
        criterion = self.criterion.to(pixel_values.device)
        if self.stage == 1 and model.training and self.args.mixup_alpha > 0:
            pixel_values, labels_a, labels_b, lam = mixup_batch(pixel_values, labels, self.args.mixup_alpha)
            outputs = model(pixel_values=pixel_values)
            loss = mixup_loss(criterion, outputs.logits.float(), labels_a, labels_b, lam)
        else:
            outputs = model(pixel_values=pixel_values)
            loss = criterion(outputs.logits.float(), labels)
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        """Stage 2: the class-aware sampler (one global stream; under Accelerate its batches are sharded across
        processes by `BatchSamplerShard`, so the sampler itself must not shard). Stage 1: the Trainer's random sampler."""
        if self.stage == 1:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        labels = dataset_labels(dataset, self.args.label_column)
        return ClassAwareSampler(labels, samples_per_class=self.args.samples_per_class, seed=self.args.seed)

    def create_optimizer(self, model=None):
        """SGD, momentum 0.9, weight decay on every trainable parameter. Stage 2: {ΔW, b} at `delta_lr_ratio` x LR
        and {s} at LR, as the reference's two parameter groups."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        lr = self.args.learning_rate
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if self.stage == 2:
            scaled = {"classifier.delta_weight", "classifier.bias"}
            groups = [
                {"params": [p for n, p in trainable if n in scaled], "lr": lr * self.args.delta_lr_ratio},
                {"params": [p for n, p in trainable if n not in scaled], "lr": lr},
            ]
            groups = [group for group in groups if group["params"]]
        else:
            groups = [{"params": [p for _, p in trainable], "lr": lr}]
        self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=self.args.weight_decay)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Stage 1 with `lr_decay_epochs`: multistep with linear warm-up (milestones converted from epochs to steps
        of this run). Otherwise the Trainer's scheduler (`lr_scheduler_type`, cosine for MiSLAS)."""
        if self.lr_scheduler is None and self.stage == 1 and self.args.lr_decay_epochs:
            steps_per_epoch = num_training_steps / self.args.num_train_epochs
            milestones = [round(epoch * steps_per_epoch) for epoch in self.args.lr_decay_epochs]
            self.lr_scheduler = multistep_schedule_with_warmup(
                optimizer if optimizer is not None else self.optimizer,
                warmup_steps=self.args.get_warmup_steps(num_training_steps),
                milestones=milestones,
                factor=self.args.lr_decay_factor,
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)
