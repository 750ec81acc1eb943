"""MislasTrainer: the two stages of MiSLAS as hooks on transformers' Trainer.

Stage 1 (representation learning): instance-balanced sampling, mixup (Sec. 3.1), the whole network trains.
Stage 2 (classifier learning): class-balanced sampling, label-aware smoothing (Sec. 3.2, Eqs. 1-3), frozen backbone
with shifted BN statistics (Sec. 3.3) and the scaled-shift head of Eq. (4).

Everything else (loop, logging, checkpointing and resume, mixed precision, gradient accumulation, distributed
training) is the Trainer's own.
"""

import bisect
import copy
import logging
import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedModel, Trainer, TrainerCallback

from .calibration import compute_metrics as calibration_compute_metrics
from .calibration import effective_training_prior
from .data import EncodedImageBatch, collate_image_batch, dataset_labels
from .losses import (
    ClassBalancedCrossEntropy,
    LabelAwareSmoothingLoss,
    LogitAdjustedCrossEntropy,
    mixup_batch,
    mixup_loss,
)
from .sampling import ClassAwareSampler
from .training_args import MislasTrainingArguments

logger = logging.getLogger(__name__)


class StopOnNonFiniteLoss(TrainerCallback):
    """Stops training with a clear error when the logged training loss is NaN or infinite."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"The training loss became {loss} at step {state.global_step}: lower --learning_rate, check the "
                "data, or disable --fp16. Checkpoints already saved in output_dir are kept."
            )


def load_saved_weights(model: PreTrainedModel, folder: str) -> None:
    """Load the weights that `save_pretrained` (a stage folder, a Trainer checkpoint) wrote to `folder` into `model`,
    in place, through the model class's own `from_pretrained`. transformers 5 saves the tensors of some backbones
    under the names of their original checkpoints (ViT's `encoder.layer.0.attention.attention.query.weight` for
    `layers.0.attention.q_proj.weight`: its weight-conversion mapping, reverted on saving), which only that loading
    path maps back; a plain `load_state_dict` of the file fails on them, or with `strict=False` (the Trainer's resume)
    silently keeps the current backbone. `ValueError` naming the first tensor of `model` the folder does not give
    (missing, or of another shape) and the first tensor of the folder `model` has no place for."""
    saved, loading_info = type(model).from_pretrained(
        folder, config=copy.deepcopy(model.config), output_loading_info=True
    )
    for kind in ("missing_keys", "mismatched_keys", "unexpected_keys"):
        names = sorted(str(name) for name in loading_info.get(kind) or ())
        if names:
            raise ValueError(
                f"{folder} does not hold the weights of this {type(model).__name__}: {len(names)} "
                f"{kind.replace('_', ' ')}, e.g. {names[0]}. Resume from a checkpoint of the same model and run."
            )
    model.load_state_dict(saved.state_dict())


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
    `data.augment_imagenet_batch` (in training colour jitter, then normalisation) for the `imagenet` augmentation of
    `make_transform`, `data.augment_cifar_batch` for a split made by `data.decode_cifar_images`. `MislasTrainer` is
    one; the float32 evaluation of a saved model (`scripts.report.float32_evaluation_trainer`) is a plain one.
    Images still encoded (`data.EncodedImageTransform`, when they are decoded on a GPU) are collated into a
    `data.EncodedImageBatch` (the default `data_collator` is `data.collate_image_batch`) and go through
    `batch_augmentation` the same way (`data.augment_imagenet_images`)."""

    def __init__(self, *args, batch_augmentation: Callable[[torch.Tensor, bool], torch.Tensor] | None = None, **kwargs):
        self.batch_augmentation = batch_augmentation
        kwargs.setdefault("data_collator", collate_image_batch)
        super().__init__(*args, **kwargs)

    def _prepare_inputs(self, inputs: dict) -> dict:
        """The Trainer's device placement, then: a raw uint8 image batch goes through `batch_augmentation` on its
        device (in training the random part left to the device, in evaluation normalisation only), and with
        `channels_last` the pixel values are made channels-last. Idempotent: a prepared batch passes through."""
        inputs = super()._prepare_inputs(inputs)
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None:
            return inputs
        if isinstance(pixel_values, EncodedImageBatch) or pixel_values.dtype == torch.uint8:
            if self.batch_augmentation is None:
                raise ValueError(
                    "The batch holds raw uint8 images (make_transform with the 'imagenet' augmentation, or a split made by "
                    "decode_cifar_images with InMemoryCifarTransform(train=True)): pass the trainer "
                    "batch_augmentation=augment_imagenet_batch or batch_augmentation=augment_cifar_batch."
                )
            pixel_values = self.batch_augmentation(pixel_values, self.model.training)
        if getattr(self.args, "channels_last", False) and pixel_values.dim() == 4:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        inputs["pixel_values"] = pixel_values
        return inputs


class MislasTrainer(DeviceBatchTrainer):
    """Trainer for one MiSLAS stage (`args.stage` is "1" or "2": `args.stage_numbers` has one entry); the model must be a
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
        if len(args.stage_numbers) != 1:
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
        if args.stage_numbers == (2,):
            model.prepare_stage2(head_mode=args.head_mode, shift_bn=args.shift_bn)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        super().__init__(
            model=model, args=args, compute_metrics=compute_metrics, batch_augmentation=batch_augmentation, **kwargs
        )
        self.add_callback(StopOnNonFiniteLoss())
        self.criterion = self._build_criterion(config.class_counts)
        config.source_prior = self._source_prior(config.class_counts)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The model weights of a resumed run, loaded by `load_saved_weights` (the Trainer's own `load_state_dict(...,
        strict=False)` would skip the tensors transformers saves under their checkpoints' names, e.g. a ViT
        backbone's); FSDP and DeepSpeed checkpoints as the Trainer loads them."""
        if model is not None or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info(f"Loading model from {resume_from_checkpoint}.")
        load_saved_weights(self.model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """`load_best_model_at_end`: the best checkpoint's weights, loaded by `load_saved_weights` (see
        `_load_from_checkpoint`)."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_best_model()
        logger.info(f"Loading best model from {self.state.best_model_checkpoint} (score: {self.state.best_metric}).")
        load_saved_weights(self.model, self.state.best_model_checkpoint)

    @property
    def stage(self) -> int:
        """The stage this Trainer trains, 1 or 2 (as `MislasConfig.stage` records it)."""
        return self.args.stage_numbers[0]

    def _build_criterion(self, class_counts) -> torch.nn.Module:
        loss = self.args.stage1_loss if self.stage == 1 else self.args.stage2_loss
        if loss == "ce":
            return torch.nn.CrossEntropyLoss()
        if loss == "logit_adjusted":
            return LogitAdjustedCrossEntropy(class_counts, tau=self.args.logit_adjustment_tau)
        if loss == "cb_ce":
            return ClassBalancedCrossEntropy(class_counts)
        return LabelAwareSmoothingLoss(
            class_counts,
            smooth_head=self.args.smooth_head,
            smooth_tail=self.args.smooth_tail,
            shape=self.args.smoothing_shape,
            power=self.args.smoothing_power,
        )

    def _source_prior(self, class_counts) -> list[float]:
        """The class prior this stage trains the logits for (`MislasConfig.source_prior`): the stream's (training
        counts in stage 1, uniform on the class-aware stream of stage 2), reweighted by CB-CE's class weights or
        shifted by the logit adjustment (`calibration.effective_training_prior`)."""
        criterion = self.criterion
        return effective_training_prior(
            class_counts,
            class_balanced_stream=self.stage == 2,
            logit_adjustment_tau=criterion.tau if isinstance(criterion, LogitAdjustedCrossEntropy) else 0.0,
            class_weights=criterion.weight.tolist() if isinstance(criterion, ClassBalancedCrossEntropy) else None,
        ).tolist()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Stage 1 in training: mixup, `lam * CE(y_a) + (1 - lam) * CE(y_b)`. Otherwise the stage's criterion
        (cross-entropy or logit-adjusted CE in stage 1; label-aware smoothing, CE, CB-CE or logit-adjusted CE in
        stage 2). Returns the batch mean."""
        labels = inputs["labels"]
        # images, or in a feature-cached stage 2 the backbone's pooled output (`feature_cache`)
        model_inputs = {name: inputs[name] for name in ("pixel_values", "pooled_features") if name in inputs}
        criterion = self.criterion.to(labels.device)
        if self.stage == 1 and model.training and self.args.mixup_alpha > 0:
            pixel_values, labels_a, labels_b, lam = mixup_batch(inputs["pixel_values"], labels, self.args.mixup_alpha)
            outputs = model(pixel_values=pixel_values)
            loss = mixup_loss(criterion, outputs.logits.float(), labels_a, labels_b, lam)
        else:
            outputs = model(**model_inputs)
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
        and {s} at LR, as the reference's two parameter groups. Stage 1 with `backbone_learning_rate`: the pretrained
        backbone (`MislasModel.pretrained_backbone`) at that LR, the rest (classifier, extra block) at LR."""
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
        elif self.args.backbone_learning_rate is not None:
            backbone = {id(p) for p in model.base_model.pretrained_backbone().parameters()}
            groups = [
                {"params": [p for _, p in trainable if id(p) in backbone], "lr": self.args.backbone_learning_rate},
                {"params": [p for _, p in trainable if id(p) not in backbone], "lr": lr},
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
