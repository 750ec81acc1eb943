"""PyTorch MiSLAS model: a ResNet backbone, shifted batch norm and the scaled-shift classifier of Eq. (4)."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ResNetConfig, ResNetModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention
from transformers.models.resnet.modeling_resnet import ResNetBottleNeckLayer, ResNetEmbeddings, ResNetEncoder

from .configuration_mislas import TRAINABLE_HEAD_PARAMETERS, MislasConfig


class MislasCifarBasicBlock(nn.Module):
    """Basic residual block of the CIFAR ResNet (He et al. 2016, Sec. 4.2) with the parameter-free "option A"
    shortcut: stride-2 subsampling plus zero padding of the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.pad_channels = out_channels - in_channels

    def shortcut(self, hidden_state: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad_channels == 0:
            return hidden_state
        hidden_state = hidden_state[:, :, :: self.stride, :: self.stride]
        half = self.pad_channels // 2
        return F.pad(hidden_state, (0, 0, 0, 0, half, self.pad_channels - half))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(hidden_state)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(hidden_state))


class MislasCifarEmbeddings(nn.Module):
    """Stem of the CIFAR ResNet: one 3x3 convolution with 16 channels, BN and ReLU (no pooling)."""

    def __init__(self, config: MislasConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(config.num_channels, config.hidden_sizes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(config.hidden_sizes[0])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(pixel_values)))


class MislasCifarEncoder(nn.Module):
    """Three stages of BasicBlocks (16/32/64 channels, the last two downsampling); ResNet-32 has 5 per stage."""

    def __init__(self, config: MislasConfig):
        super().__init__()
        depths, hidden_sizes = config.backbone_spec.depths, config.hidden_sizes
        in_channels = hidden_sizes[0]
        for index, (depth, out_channels) in enumerate(zip(depths, hidden_sizes)):
            blocks = []
            for block_index in range(depth):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(MislasCifarBasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.num_stages = len(depths)

    def forward(self, hidden_state: torch.Tensor, output_hidden_states: bool = False):
        hidden_states = (hidden_state,) if output_hidden_states else None
        for index in range(self.num_stages):
            hidden_state = getattr(self, f"layer{index + 1}")(hidden_state)
            if output_hidden_states:
                hidden_states = hidden_states + (hidden_state,)
        return hidden_state, hidden_states


class MislasImageNetEncoder(nn.Module):
    """torchvision-layout ResNet stages, built from transformers' own ResNet layers."""

    def __init__(self, resnet_config: ResNetConfig):
        super().__init__()
        self.resnet_encoder = ResNetEncoder(resnet_config)

    def forward(self, hidden_state: torch.Tensor, output_hidden_states: bool = False):
        outputs = self.resnet_encoder(hidden_state, output_hidden_states=output_hidden_states, return_dict=True)
        return outputs.last_hidden_state, outputs.hidden_states


def resnet_config_for(config: MislasConfig) -> ResNetConfig:
    """The transformers `ResNetConfig` of an ImageNet-family backbone (v1.5: stride on the 3x3 convolution)."""
    spec = config.backbone_spec
    return ResNetConfig(
        num_channels=config.num_channels,
        embedding_size=64,
        hidden_sizes=list(spec.hidden_sizes),
        depths=list(spec.depths),
        layer_type=spec.layer_type,
        downsample_in_bottleneck=False,
        downsample_in_first_stage=False,
    )


def load_resnet_backbone(model: "MislasModel", resnet: ResNetModel) -> list[str]:
    """Copy the stem and stages of a transformers `ResNetModel` (e.g. `ResNetModel.from_pretrained(
    "microsoft/resnet-50")`) into the ImageNet-family backbone of `model`: every tensor of `resnet.embedder.*` goes to
    `model.embedder.*` and every tensor of `resnet.encoder.*` to `model.encoder.resnet_encoder.*`, the layers being
    transformers' own. A stage of `model` may have fewer blocks than the checkpoint's (Places-LT's ResNet-152 keeps
    two of the last stage's three, the reference's `layer4` cut before its extra block): the first blocks load and
    the names of the checkpoint tensors left out are returned. Anything else that does not fit raises `ValueError`
    naming the tensor; no backbone tensor keeps its random initialisation."""
    if model.config.backbone_spec.stem != "imagenet":
        raise ValueError(
            f"a transformers ResNet loads into an ImageNet-family backbone, not {model.config.backbone}: leave "
            "backbone unset to take the checkpoint's, or choose one of the ImageNet-family backbones"
        )
    targets = {"embedder.": model.embedder.state_dict(), "encoder.": model.encoder.resnet_encoder.state_dict()}
    loaded = {prefix: {} for prefix in targets}
    left_out = []
    for name, tensor in resnet.state_dict().items():
        prefix = next((prefix for prefix in targets if name.startswith(prefix)), None)
        if prefix is None:
            continue  # the pooler has no parameters
        key = name[len(prefix) :]
        if key not in targets[prefix]:
            if prefix == "encoder." and key.startswith("stages."):
                left_out.append(name)
                continue
            raise ValueError(f"checkpoint tensor resnet.{name} has no place in the {model.config.backbone} backbone")
        if targets[prefix][key].shape != tensor.shape:
            raise ValueError(
                f"checkpoint tensor resnet.{name} has shape {tuple(tensor.shape)}, the {model.config.backbone} "
                f"backbone's {tuple(targets[prefix][key].shape)}"
            )
        loaded[prefix][key] = tensor
    model.embedder.load_state_dict(loaded["embedder."], strict=True)
    model.encoder.resnet_encoder.load_state_dict(loaded["encoder."], strict=True)
    return left_out


class MislasExtraBlock(ResNetBottleNeckLayer):
    """The bottleneck block (channels -> channels / 4 -> channels, stride 1, identity shortcut) that the reference
    trains on the frozen `resnet152_places` features for Places-LT, in the place of ResNet-152's `layer4.2`. The
    reference builds it as a new torchvision `Bottleneck(2048, 512)`, so it is initialised as PyTorch initialises a
    new `Conv2d` and `BatchNorm2d`: its convolutions carry `pytorch_default_init`, which
    `MislasPreTrainedModel._init_weights` reads."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, stride=1, reduction=4)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.pytorch_default_init = True


class MislasScaledShiftClassifier(nn.Module):
    r"""
    The classifier of Eq. (4), `z = diag(s) ((r W + ΔW)^T x + b)`, with the bias inside the scaling as in the
    reference implementation (`logits = s * fc(x)`).

    `weight` (W, `[K, M]`) and `bias` (b) are the stage-1 linear classifier; `scale` (s, init 1) and `delta_weight`
    (ΔW, init 0) are learned in stage 2; r is the retention factor. The same head expresses a plain linear layer
    (stage 1), cRT (r = 0, s = 1 fixed, ΔW learned), LWS (r = 1, ΔW = 0 fixed, s learned) and MiSLAS (r = 1, s and
    ΔW learned); which parameters train is set by [`MislasForImageClassification.prepare_stage2`].
    """

    def __init__(self, in_features: int, num_labels: int, retention_factor: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_labels, in_features))
        self.bias = nn.Parameter(torch.empty(num_labels))
        self.scale = nn.Parameter(torch.ones(num_labels))
        self.delta_weight = nn.Parameter(torch.zeros(num_labels, in_features))
        self.retention_factor = retention_factor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits in float32 under bf16/fp16 autocast: the losses and the calibration metrics (ECE, NLL) read them,
        and the head is one `[K, M]` product, so full precision costs nothing measurable. Without autocast the head
        computes in its weights' own dtype, so a model cast as a whole (`double()`, `half()`, `to(torch.bfloat16)`,
        `from_pretrained(dtype=...)`) runs in that dtype end to end."""
        device_type = features.device.type
        dtype = torch.float32 if torch.is_autocast_enabled(device_type) else self.weight.dtype
        with torch.autocast(device_type=device_type, enabled=False):
            weight = self.retention_factor * self.weight.to(dtype) + self.delta_weight.to(dtype)
            return self.scale.to(dtype) * F.linear(features.to(dtype), weight, self.bias.to(dtype))


# Parameters of the head that train in each mode (Sec. 3.2, Eq. 4).
class MislasPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for MiSLAS models."""

    config: MislasConfig
    base_model_prefix = "mislas"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["MislasCifarBasicBlock", "ResNetBottleNeckLayer", "ResNetBasicLayer", "MislasExtraBlock"]

    def _init_weights(self, module):
        """Kaiming-normal convolutions (fan-in for the CIFAR net as in LDAM-DRW, fan-out for the ImageNet family as
        in torchvision), BN at identity, and the scaled-shift head at s = 1, ΔW = 0. The Places-LT extra block's
        convolutions (`pytorch_default_init`) get PyTorch's default `Conv2d` initialisation, kaiming-uniform with
        a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as in the reference."""
        cifar = self.config.backbone_spec.stem == "cifar"
        if isinstance(module, nn.Conv2d):
            if getattr(module, "pytorch_default_init", False):
                init.kaiming_uniform_(module.weight, a=5**0.5)
            elif cifar:
                init.kaiming_normal_(module.weight)
            else:
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, MislasScaledShiftClassifier):
            fan_in = module.weight.shape[1]
            if cifar:
                init.kaiming_normal_(module.weight)
            else:
                init.kaiming_uniform_(module.weight, a=5**0.5)
            init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
            init.ones_(module.scale)
            init.zeros_(module.delta_weight)


class MislasModel(MislasPreTrainedModel):
    """
    The MiSLAS feature extractor: a ResNet (plus, for Places-LT, one extra bottleneck block) and global average
    pooling. Returns `BaseModelOutputWithPoolingAndNoAttention` as transformers' `ResNetModel` does.

    It also owns the batch-norm behaviour of stage 2 (Sec. 3.3): after [`freeze_features`], the weights stay fixed
    and BN either keeps its stage-1 statistics (eval mode) or, with `shift_bn`, keeps updating its running mean and
    variance on the class-balanced stream while the affine parameters stay fixed. The mode survives the
    `model.train()` that `Trainer` calls at every step.
    """

    def __init__(self, config: MislasConfig):
        super().__init__(config)
        if config.backbone_spec.stem == "cifar":
            self.embedder = MislasCifarEmbeddings(config)
            self.encoder = MislasCifarEncoder(config)
        else:
            resnet_config = resnet_config_for(config)
            self.embedder = ResNetEmbeddings(resnet_config)
            self.encoder = MislasImageNetEncoder(resnet_config)
        hidden_size = config.hidden_sizes[-1]
        self.extra_block = MislasExtraBlock(hidden_size) if config.extra_block else None
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.features_frozen = False
        self.post_init()
        if config.freeze_backbone:
            self.pretrained_backbone().requires_grad_(False)

    def pretrained_backbone(self) -> nn.ModuleList:
        """The stem and stages: kept frozen in both stages when `config.freeze_backbone` (Places-LT)."""
        return nn.ModuleList([self.embedder, self.encoder])

    def freeze_features(self, shift_bn: bool) -> None:
        """Stage 2: freeze every weight of the feature extractor; with `shift_bn`, the BN layers of the modules
        trained in stage 1 keep updating their running statistics (Eqs. 5-6), otherwise all BN is in eval mode."""
        self.requires_grad_(False)
        self.features_frozen = True
        self.config.shift_bn = shift_bn
        self.train(self.training)

    def train(self, mode: bool = True):
        """`nn.Module.train`, keeping frozen parts in the mode stage 2 and `freeze_backbone` require."""
        super().train(mode)
        if mode:
            if self.config.freeze_backbone:
                self.pretrained_backbone().eval()
            if self.features_frozen and not self.config.shift_bn:
                super().train(False)
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_state, hidden_states = self.encoder(self.embedder(pixel_values), output_hidden_states)
        if self.extra_block is not None:
            hidden_state = self.extra_block(hidden_state)
            if output_hidden_states:
                hidden_states = hidden_states + (hidden_state,)
        pooled_output = self.pooler(hidden_state).flatten(1)
        if not return_dict:
            return tuple(value for value in (hidden_state, pooled_output, hidden_states) if value is not None)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden_state, pooler_output=pooled_output, hidden_states=hidden_states
        )


class MislasForImageClassification(MislasPreTrainedModel):
    """
    MiSLAS image classifier: [`MislasModel`] features and the scaled-shift head of Eq. (4), whose output is divided
    by `config.temperature` (post-hoc temperature scaling; 1.0 by default, a no-op). With `labels`, the loss is
    plain cross-entropy of the returned logits; the two-stage losses (mixup, label-aware smoothing) live in the
    trainer.

    Stage 1 trains backbone, W and b. [`prepare_stage2`] switches to classifier learning.
    """

    def __init__(self, config: MislasConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mislas = MislasModel(config)
        self.classifier = MislasScaledShiftClassifier(
            config.hidden_sizes[-1], config.num_labels, retention_factor=config.retention_factor
        )
        self.post_init()
        self.set_head_mode(config.head_mode)

    def set_head_mode(self, head_mode: str) -> None:
        """Make the head parameters of `head_mode` trainable (see `TRAINABLE_HEAD_PARAMETERS`) and the others
        fixed; cRT uses r = 0, every other mode r = 1."""
        if head_mode not in TRAINABLE_HEAD_PARAMETERS:
            raise ValueError(f"head_mode={head_mode!r} is not one of {', '.join(TRAINABLE_HEAD_PARAMETERS)}.")
        trainable = TRAINABLE_HEAD_PARAMETERS[head_mode]
        for name, parameter in self.classifier.named_parameters():
            parameter.requires_grad_(name in trainable)
        self.config.head_mode = head_mode
        self.config.retention_factor = 0.0 if head_mode == "crt" else 1.0
        self.classifier.retention_factor = self.config.retention_factor

    def prepare_stage2(self, head_mode: str = "mislas", shift_bn: bool = True) -> None:
        """
        Switch to stage 2 (classifier learning on the class-balanced stream): freeze the feature extractor, set the
        BN behaviour of Sec. 3.3 (`shift_bn`: update running statistics, affine parameters fixed), and make the
        head parameters of `head_mode` trainable (`"mislas"`, `"crt"`, `"lws"`, or `"linear"` to retrain W and b).
        """
        self.mislas.freeze_features(shift_bn)
        self.set_head_mode(head_mode)
        self.config.stage = 2
        self.config.temperature, self.config.calibration = 1.0, None  # a temperature fit to the old head is void

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, num_labels)`; when given, the output carries the cross-entropy loss.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.mislas(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        if self.config.temperature != 1.0:  # post-hoc temperature scaling: z / T, or z_k / T_k class-wise
            logits = logits / torch.tensor(self.config.temperature, dtype=logits.dtype, device=logits.device)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = [
    "MislasPreTrainedModel",
    "MislasModel",
    "MislasForImageClassification",
    "MislasScaledShiftClassifier",
    "MislasExtraBlock",
    "load_resnet_backbone",
]
