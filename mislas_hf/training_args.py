"""`MislasTrainingArguments`: transformers' `TrainingArguments` plus the knobs of MiSLAS's two stages (Table 6 of the
paper), and the precision default they pick (`native_bf16_available`)."""

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .configuration_mislas import HEAD_MODES
from .losses import SMOOTHING_SHAPES

STAGE2_LOSSES = ("las", "ce", "cb_ce")
"""Stage-2 losses: label-aware smoothing (Eqs. 1-3), cross-entropy, class-balanced cross-entropy."""


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
        metadata={"help": "Stage-2 head (Eq. 4): mislas, crt, lws, or linear.", "choices": list(HEAD_MODES)},
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

    @property
    def stage_numbers(self) -> tuple[int, ...]:
        """The stages `stage` runs, as the numbers `MislasConfig.stage` records: (1,), (2,) or (1, 2)."""
        return (1, 2) if self.stage == "both" else (int(self.stage),)

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
