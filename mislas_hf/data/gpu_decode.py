"""JPEG decoding on the training device for the `imagenet` augmentation, when that device is a GPU.

The CPU path (`transforms.ImageNetTransform`) decodes, crops and resizes every image in the loader workers. Here
the workers only read the files (`EncodedImageTransform`), the loader hands the batch over as it is
(`collate_image_batch` -> `EncodedImageBatch`), and the trainer's `batch_augmentation` (`augment_imagenet_images`)
decodes all the JPEGs of the batch in one call of torchvision's `decode_jpeg(list_of_tensors, device=...)` (nvJPEG on
a CUDA device), then crops, resizes and flips each image and finishes the batch with `augment_imagenet_batch`
(colour jitter, normalisation), all on the device.

The augmentation is the CPU path's: the same crop boxes (`transforms.random_resized_crop_box`, the distribution of
the reference's `RandomResizedCrop(224)`) and flips, drawn in the same order from torch's global RNG, the same
antialiased `resize` of torchvision. On a CPU the two paths give identical pixels. On a GPU they differ slightly:
nvJPEG's inverse DCT and chroma upsampling are not libjpeg-turbo's, and torchvision resizes uint8 images there
through float32 and rounds, where its CPU kernel uses fixed-point weights (at most one level apart).

Images nvJPEG does not decode (`device_decodable_jpeg`: PNG, WebP and other formats, CMYK or 12-bit JPEGs,
arithmetic-coded or lossless JPEGs) are decoded on the CPU in the loader workers (`decode_rgb`, as the CPU path
does) and cropped on the device with the rest, so every image goes through the same geometry.
`scripts.data_setup.load_splits` selects this path when the training device is a CUDA GPU; everywhere else the
loader workers do all of it as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg
from transformers import default_data_collator

from .device_augment import augment_imagenet_batch
from .preprocessing import Preprocessing
from .transforms import JPEG_SIGNATURE, _check_columns, decode_rgb, random_resized_crop_box, resize_image

DEVICE_DECODABLE_FRAMES = (0xC0, 0xC1, 0xC2)
"""JPEG start-of-frame markers nvJPEG decodes: baseline, extended sequential and progressive, all Huffman-coded.
The others (lossless, arithmetic-coded, hierarchical) are decoded on the CPU."""
DEVICE_DECODE_ERROR = "Error while decoding JPEG images"
"""How torchvision's `decode_jpeg(device="cuda")` reports a file nvJPEG could not decode (the other errors, such as
a build without nvJPEG, read differently)."""
STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD9)}
"""JPEG markers without a length field (TEM, RSTn, SOI): skipped while looking for the frame header."""
ENCODED_IMAGES = "encoded_images"
"""The key under which `EncodedImageTransform` passes the images on (not `pixel_values`: they are not model input
yet, and `collate_image_batch` must tell them from images that only need stacking)."""


def _jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """`(start-of-frame marker, sample precision in bits, number of components)` of a JPEG's frame header, read by
    walking the marker segments from the start of the file; None when none comes before the first scan."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        elif marker in STANDALONE_MARKERS:
            position += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            return (marker, data[position + 4], data[position + 9]) if position + 10 <= len(data) else None
        elif marker == 0xDA:  # start of scan
            return None
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def device_decodable_jpeg(data: bytes) -> bool:
    """Whether `data` is a JPEG that torchvision's `decode_jpeg(device="cuda")` (nvJPEG) decodes to the pixels the CPU
    path gives: a baseline, extended or progressive Huffman-coded frame (`DEVICE_DECODABLE_FRAMES`) of 8-bit
    samples with 1 (grey, expanded to RGB) or 3 (YCbCr) components. CMYK / YCCK JPEGs (4 components) are not."""
    if data[:3] != JPEG_SIGNATURE:
        return False
    frame = _jpeg_frame(data)
    return frame is not None and frame[0] in DEVICE_DECODABLE_FRAMES and frame[1] == 8 and frame[2] in (1, 3)


def _file_bytes(image) -> bytes | None:
    """The encoded bytes of a `datasets.Image(decode=False)` value (`{"bytes", "path"}`), a file path or bytes; None
    for anything else (a PIL image, a missing file), which `decode_rgb` then decodes or rejects."""
    if isinstance(image, dict):
        image = image["bytes"] if image.get("bytes") is not None else image.get("path")
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        with open(image, "rb") as file:
            return file.read()
    return bytes(image) if isinstance(image, (bytes, bytearray)) else None


def encoded_or_decoded(image) -> torch.Tensor:
    """One image as the loader workers pass it to the device: a JPEG that nvJPEG decodes as its encoded bytes (a 1-D
    uint8 tensor), any other image decoded on the CPU (`decode_rgb`: a `(3, H, W)` uint8 tensor)."""
    data = _file_bytes(image)
    if data is not None and device_decodable_jpeg(data):
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_rgb(image if data is None else data)


class EncodedImageTransform:
    """Callable for `Dataset.set_transform` in the loader workers when images are decoded on the device: a batch dict
    -> `{ENCODED_IMAGES: [encoded_or_decoded(image)], "labels": [int]}`. Nothing random happens here: the crop,
    flip and jitter are drawn on the device (`augment_imagenet_images`); the same transform serves training and
    evaluation."""

    def __init__(self, image_column: str = "image", label_column: str = "label"):
        self.image_column = image_column
        self.label_column = label_column

    def __call__(self, batch: dict) -> dict:
        """Read (and for non-JPEG images decode) one batch (columns as lists) of a `datasets.Dataset`."""
        _check_columns(batch, self.image_column, self.label_column)
        return {
            ENCODED_IMAGES: [encoded_or_decoded(image) for image in batch[self.image_column]],
            "labels": [int(label) for label in batch[self.label_column]],
        }


@dataclass
class EncodedImageBatch:
    """The images of one batch as `EncodedImageTransform` made them, in a list: 1-D encoded JPEGs and `(3, H, W)`
    uint8 images of any size. Not a list or a tensor on purpose: accelerate's and the Trainer's device placement
    leave it on the CPU (`decode_jpeg` reads its input from host memory), and `find_batch_size` skips it for the
    labels. The DataLoader pins it (`pin_memory`) as it pins tensors."""

    images: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.images)

    def pin_memory(self) -> EncodedImageBatch:
        """The same images in page-locked host memory (called by the DataLoader's `pin_memory`)."""
        return EncodedImageBatch([image.pin_memory() for image in self.images])


def collate_image_batch(features: list[dict]) -> dict:
    """`transformers.default_data_collator`, except that the `ENCODED_IMAGES` of `EncodedImageTransform` (1-D encoded
    JPEGs and decoded images of any size) become the batch's `pixel_values` as one `EncodedImageBatch`."""
    if not features or ENCODED_IMAGES not in features[0]:
        return default_data_collator(features)
    batch = default_data_collator([{k: v for k, v in feature.items() if k != ENCODED_IMAGES} for feature in features])
    batch["pixel_values"] = EncodedImageBatch([feature[ENCODED_IMAGES] for feature in features])
    return batch


def decode_images(images: Sequence[torch.Tensor], device) -> list[torch.Tensor]:
    """The images of an `EncodedImageBatch` as RGB uint8 `(3, H, W)` tensors on `device`: the encoded JPEGs (1-D)
    decoded together by `decode_jpeg(list, mode=RGB, device=device)` (nvJPEG, batched, on a CUDA device; libjpeg-turbo
    on the CPU), the decoded ones copied there. Should the device's decoder refuse a file of the batch (torchvision's
    `DEVICE_DECODE_ERROR`; nvJPEG returns no partial results), the batch's JPEGs are decoded on the CPU and copied
    instead, and an error there is the file's own. Any other error (e.g. a torchvision built without nvJPEG) is
    raised."""
    encoded = [index for index, image in enumerate(images) if image.dim() == 1]
    decoded = [image.to(device, non_blocking=True) if image.dim() == 3 else None for image in images]
    if encoded:
        batch = [images[index] for index in encoded]
        try:
            pixels = decode_jpeg(batch, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as error:
            if DEVICE_DECODE_ERROR not in str(error):
                raise
            pixels = [image.to(device) for image in decode_jpeg(batch, mode=ImageReadMode.RGB)]
        for index, image in zip(encoded, pixels):
            decoded[index] = image
    return decoded


def draw_crop_parameters(sizes: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int, int, int]], list[bool]]:
    """Per image of `(height, width)`: the training crop box `(top, left, height, width)` of
    `transforms.random_resized_crop_box` (the reference's `RandomResizedCrop` distribution) and whether it is
    flipped (p = 0.5), drawn from torch's global RNG in the order `ImageNetTransform` draws them (box, then flip,
    image by image)."""
    boxes, flips = [], []
    for height, width in sizes:
        boxes.append(random_resized_crop_box(height, width))
        flips.append(torch.rand(1).item() < 0.5)
    return boxes, flips


def resized_crops(
    images: Sequence[torch.Tensor],
    boxes: Sequence[tuple[int, int, int, int]],
    flips: Sequence[bool],
    preprocessing: Preprocessing,
) -> torch.Tensor:
    """The training geometry of `ImageNetTransform` on images already decoded (on any device): each box cut out,
    resized to `image_size` square (`resize_image`, `preprocessing.resample`), flipped where asked; a uint8 batch
    `[B, 3, size, size]` on the images' device."""
    size = preprocessing.image_size
    crops = []
    for image, (top, left, height, width), flip in zip(images, boxes, flips):
        crop = image[None, :, top : top + height, left : left + width].contiguous(memory_format=torch.channels_last)
        crop = resize_image(crop, [size, size], preprocessing.resample)[0]
        crops.append(TF.horizontal_flip(crop) if flip else crop)
    return torch.stack(crops)


def resized_centre_crops(images: Sequence[torch.Tensor], preprocessing: Preprocessing) -> torch.Tensor:
    """The evaluation geometry of `ImageNetTransform` on images already decoded (on any device): shorter side resized
    to `resize_size` (`resize_image`), centre crop `image_size`; a uint8 batch `[B, 3, size, size]`."""
    crops = []
    for image in images:
        image = image[None].contiguous(memory_format=torch.channels_last)
        resized = resize_image(image, preprocessing.resize_size, preprocessing.resample)
        crops.append(TF.center_crop(resized, preprocessing.image_size)[0])
    return torch.stack(crops)


def augment_imagenet_images(
    pixel_values: torch.Tensor | EncodedImageBatch,
    train: bool,
    preprocessing: Preprocessing,
    device=None,
) -> torch.Tensor:
    """The trainer's `batch_augmentation` for the `imagenet` augmentation, for either kind of batch the loader gives:

    * a uint8 batch `[B, 3, H, W]` (the CPU path's crops): `augment_imagenet_batch` with the preprocessing's mean/std,
      on the batch's device;
    * an `EncodedImageBatch`: decoded on `device` (default: the current CUDA device, else the CPU;
      `decode_images`), then in training cropped, resized and flipped (`draw_crop_parameters`, `resized_crops`), in
      evaluation resized and centre-cropped (`resized_centre_crops`), then `augment_imagenet_batch`.

    Returns the float32 model input `[B, 3, size, size]`."""
    if isinstance(pixel_values, EncodedImageBatch):
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        images = decode_images(pixel_values.images, device)
        if train:
            boxes, flips = draw_crop_parameters([tuple(image.shape[-2:]) for image in images])
            pixel_values = resized_crops(images, boxes, flips, preprocessing)
        else:
            pixel_values = resized_centre_crops(images, preprocessing)
    return augment_imagenet_batch(pixel_values, train, mean=preprocessing.mean, std=preprocessing.std)
