"""`MislasTrainingArguments`: transformers' `TrainingArguments` plus the knobs of MiSLAS's two stages (Table 6 of the
paper), and the precision default they pick (`native_bf16_available`)."""

import math
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .configuration_mislas import HEAD_MODES
from .losses import SMOOTHING_SHAPES

STAGE1_LOSSES = ("ce", "logit_adjusted")
"""Stage-1 losses: cross-entropy, logit-adjusted cross-entropy (Menon et al. 2021; Balanced Softmax at tau = 1)."""
STAGE2_LOSSES = ("las", "ce", "cb_ce", "logit_adjusted")
"""Stage-2 losses: label-aware smoothing (Eqs. 1-3), cross-entropy, class-balanced cross-entropy, logit-adjusted
cross-entropy."""


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
    stage1_loss: str = field(
        default="ce",
        metadata={
            "help": "Stage-1 loss (with mixup): ce, or logit_adjusted (CE of z + tau log pi_train, Menon et al. 2021; "
            "tau = 1 is Balanced Softmax, Ren et al. 2020), which trains the logits for a balanced test set: the "
            "model records a uniform source_prior at tau = 1.",
            "choices": list(STAGE1_LOSSES),
        },
    )
    stage2_loss: str = field(
        default="las",
        metadata={
            "help": "Stage-2 loss: las (label-aware smoothing, Eq. 1), ce, cb_ce (class-balanced CE, Table 2), or "
            "logit_adjusted. Stage 2 draws class-balanced batches (uniform class prior), so logit_adjusted there "
            "balances a second time: the head learns the prior pi_train^-tau (recorded as source_prior), favouring "
            "tail classes; it is a baseline to compare, not a MiSLAS setting.",
            "choices": list(STAGE2_LOSSES),
        },
    )
    logit_adjustment_tau: float = field(
        default=1.0,
        metadata={"help": "tau of the logit_adjusted loss (>= 0): 1 is Balanced Softmax, 0 plain cross-entropy."},
    )
    smooth_head: float = field(default=0.3, metadata={"help": "epsilon_1 of Eq. (3), for the largest class."})
    smooth_tail: float = field(default=0.0, metadata={"help": "epsilon_K of Eq. (3), for the smallest class."})
    smoothing_shape: str = field(
        default="concave",
        metadata={"help": "Related function f of Eq. (3.a-c) or (7).", "choices": list(SMOOTHING_SHAPES)},
    )
    smoothing_power: float | None = field(default=None, metadata={"help": "p of the exponential form, Eq. (7)."})
    shift_bn: bool | None = field(
        default=None,
        metadata={
            "help": "Update the running statistics of the batch-norm layers stage 1 trained, in stage 2 (Sec. 3.3). "
            "Unset: on wherever there are any; refused for a backbone without batch norm (ViT, DINOv2, CLIP, Swin, "
            "ConvNeXt) and for a frozen one without an extra block.",
            "nargs": "?",  # a bare --shift_bn means true
            "const": True,
        },
    )
    backbone_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Stage 1: learning rate of the pretrained backbone (e.g. 10x below learning_rate when fine-tuning "
            "a pretrained network); the classifier and the extra block train at learning_rate. Unset: learning_rate "
            "for all. Stage 2 freezes the backbone."
        },
    )
    cached_feature_views: int | None = field(
        default=None,
        metadata={
            "help": "Train the head from cached features (mislas_hf.feature_cache), in every stage the run trains: "
            "the frozen backbone's pooled features of K views per training image (K = 1: the evaluation transform; "
            "K > 1: K draws of the training transform) are computed once into OUTPUT_DIR/feature_cache/ (or "
            "--feature_cache_dir) and reused by reruns. Needs a backbone whose output cannot change: stage 2 with shift_bn false (shifted BN changes "
            "it at every step); stage 1 with --freeze_backbone true, no extra block and mixup_alpha 0 (the linear "
            "probe). Unset: the stages train on images."
        },
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "With cached_feature_views: the folder of the feature caches, in place of "
            "OUTPUT_DIR/feature_cache/. Runs given the same folder share their caches (each sits in a subfolder named by the fingerprint of its "
            "backbone, images and transform, so a run reuses only features of its own backbone, images and "
            "transform): e.g. several stage-2 heads trained on one frozen backbone extract its features once."
        },
    )
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
        if not (math.isfinite(self.logit_adjustment_tau) and self.logit_adjustment_tau >= 0):
            raise ValueError(
                f"logit_adjustment_tau={self.logit_adjustment_tau} must be a finite number >= 0 (1: Balanced Softmax)."
            )
        if self.delta_lr_ratio < 0:
            raise ValueError(f"delta_lr_ratio={self.delta_lr_ratio} must be >= 0.")
        if self.backbone_learning_rate is not None and self.backbone_learning_rate < 0:
            raise ValueError(f"backbone_learning_rate={self.backbone_learning_rate} must be >= 0.")
        if self.cached_feature_views is not None:
            self._check_cacheable_stages()
        elif self.feature_cache_dir is not None:
            raise ValueError(
                f"feature_cache_dir={self.feature_cache_dir!r} is where cached features go, but cached_feature_views "
                "is unset, so this run trains on images and caches nothing: pass --cached_feature_views 1 (or K), or "
                "leave feature_cache_dir unset."
            )
        if self.lr_decay_epochs is not None and list(self.lr_decay_epochs) != sorted(self.lr_decay_epochs):
            raise ValueError(f"lr_decay_epochs={self.lr_decay_epochs} must be increasing.")

    def _check_cacheable_stages(self):
        """`ValueError`, saying why, when `cached_feature_views` is below 1 or a stage of the run changes the
        backbone's output from one step to the next in a way these arguments decide: shifted BN in stage 2, mixup in
        stage 1 (the model's part, a frozen backbone, is checked by `feature_cache.check_backbone_cacheable`)."""
        if self.cached_feature_views < 1:
            raise ValueError(f"cached_feature_views={self.cached_feature_views} must be >= 1 (1: the evaluation view).")
        if 2 in self.stage_numbers and self.shift_bn:
            raise ValueError(
                "cached_feature_views caches the backbone's output once, but shift_bn=True updates its batch-norm "
                "statistics at every stage-2 step, which changes that output: pass --shift_bn false, or leave "
                "cached_feature_views unset to train stage 2 on images."
            )
        if 1 in self.stage_numbers and self.mixup_alpha > 0:
            raise ValueError(
                f"cached_feature_views caches the backbone's output of each training image, but stage 1 with "
                f"mixup_alpha={self.mixup_alpha} trains on blended images, whose features are not in the cache: pass "
                "--mixup_alpha 0 (with --freeze_backbone true: the linear probe), run --stage 2 alone from cached "
                "features, or leave cached_feature_views unset."
            )
