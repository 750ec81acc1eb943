"""The paper's built-in ResNet backbones of a `MislasConfig.backbone` (`BACKBONES`): the CIFAR ResNet-32 of He et
al. (2016, Sec. 4.2), the torchvision-layout ImageNet family built from transformers' own ResNet layers, the extra
bottleneck block of Places-LT, and the loading of a transformers `ResNetModel` checkpoint into them. `MislasModel`
(`modeling_mislas.py`) assembles them; shipped with saved models, so only relative imports of this package."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ResNetConfig, ResNetModel
from transformers.models.resnet.modeling_resnet import ResNetBottleNeckLayer, ResNetEncoder

from .configuration_mislas import MislasConfig


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


def load_resnet_backbone(model: PreTrainedModel, resnet: ResNetModel) -> list[str]:
    """Copy the stem and stages of a transformers `ResNetModel` (e.g. `ResNetModel.from_pretrained(
    "microsoft/resnet-50")`) into the ImageNet-family backbone of `model`, a `MislasModel`: every tensor of
    `resnet.embedder.*` goes to `model.embedder.*` and every tensor of `resnet.encoder.*` to
    `model.encoder.resnet_encoder.*`, the layers being transformers' own. A stage of `model` may have fewer blocks
    than the checkpoint's (Places-LT's ResNet-152 keeps two of the last stage's three, the reference's `layer4` cut
    before its extra block): the first blocks load and the names of the checkpoint tensors left out are returned.
    Anything else that does not fit raises `ValueError` naming the tensor; no backbone tensor keeps its random
    initialisation."""
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


__all__ = [
    "MislasCifarBasicBlock",
    "MislasCifarEmbeddings",
    "MislasCifarEncoder",
    "MislasExtraBlock",
    "MislasImageNetEncoder",
    "load_resnet_backbone",
    "resnet_config_for",
]
