"""mislas_hf.data.gpu_decode on the CPU: which files the device decodes, the hand-over of encoded images through the
loader and the trainer, and the decode + crop path, which must equal the per-image CPU path (`ImageNetTransform`)."""

import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TrainingArguments

from mislas_hf.data import (
    IMAGENET_CROP_RATIO,
    IMAGENET_CROP_SCALE,
    EncodedImageBatch,
    EncodedImageTransform,
    Preprocessing,
    augment_imagenet_batch,
    augment_imagenet_images,
    collate_image_batch,
    make_transform,
)
from mislas_hf.data import gpu_decode
from mislas_hf.data.gpu_decode import (
    ENCODED_IMAGES,
    decode_images,
    device_decodable_jpeg,
    draw_crop_parameters,
    resized_crops,
)

IMAGENET = Preprocessing.reference("imagenet")


def encoded(image: Image.Image, form: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, form, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    """A 300 x 400 RGB photograph-like image: smooth colour regions plus noise."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).resize((400, 300), Image.BICUBIC)
    noise = rng.normal(0, 12, (300, 400, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def files(picture) -> dict[str, bytes]:
    """The kinds of files an ImageNet-family set holds: baseline, progressive and grey JPEGs, one with a large EXIF
    segment before its frame header, a CMYK JPEG, a PNG and a lossless WebP."""
    return {
        "baseline": encoded(picture, "JPEG", quality=90),
        "progressive": encoded(picture, "JPEG", quality=90, progressive=True),
        "grey": encoded(picture.convert("L"), "JPEG"),
        "exif": encoded(picture, "JPEG", exif=b"Exif\x00\x00" + bytes(5000)),
        "cmyk": encoded(picture.convert("CMYK"), "JPEG"),
        "png": encoded(picture.convert("RGBA"), "PNG"),
        "webp": encoded(picture.resize((200, 150)), "WEBP", lossless=True),
    }


def frame_offset(data: bytes) -> int:
    """Offset of the baseline frame header (FF C0) of a PIL-written JPEG."""
    return data.index(b"\xff\xc0")


def test_device_decodes_8_bit_huffman_grey_and_ycbcr_jpegs_only(files):
    """nvJPEG's share: baseline, progressive, grey, with EXIF; not CMYK, PNG, WebP. Frame headers patched to lossless
    (SOF3), arithmetic-coded (SOF9) or 12-bit samples go to the CPU, as do bytes that are no JPEG."""
    decodable = {name: device_decodable_jpeg(data) for name, data in files.items()}
    assert decodable == {
        "baseline": True, "progressive": True, "grey": True, "exif": True, "cmyk": False, "png": False, "webp": False
    }
    baseline = bytearray(files["baseline"])
    offset = frame_offset(baseline)
    for position, value in ((offset + 1, 0xC3), (offset + 1, 0xC9), (offset + 4, 12)):
        patched = bytearray(baseline)
        patched[position] = value
        assert not device_decodable_jpeg(bytes(patched))
    assert not device_decodable_jpeg(b"\xff\xd8\xff")  # a JPEG start and nothing else
    assert not device_decodable_jpeg(b"GIF89a")


def test_workers_pass_jpegs_encoded_and_decode_the_rest(files, tmp_path):
    """`EncodedImageTransform`: the file's own bytes for device-decodable JPEGs, from `{"bytes"}`, `{"path"}` or a path;
    everything else decoded to RGB as PIL decodes it; missing files and columns named."""
    (tmp_path / "a.jpg").write_bytes(files["progressive"])
    images = [
        {"bytes": files["baseline"], "path": None},
        {"bytes": None, "path": str(tmp_path / "a.jpg")},
        str(tmp_path / "a.jpg"),
        {"bytes": files["cmyk"], "path": None},
        {"bytes": files["png"], "path": None},
        Image.open(io.BytesIO(files["webp"])),
    ]
    out = EncodedImageTransform()({"image": images, "label": [3, 1, 4, 1, 5, 9]})
    assert out["labels"] == [3, 1, 4, 1, 5, 9]
    pixel_values = out[ENCODED_IMAGES]
    assert "pixel_values" not in out
    for value, data in zip(pixel_values[:3], (files["baseline"], files["progressive"], files["progressive"])):
        assert value.dtype == torch.uint8 and value.dim() == 1 and bytes(value.numpy()) == data
    for value, name in zip(pixel_values[3:], ("cmyk", "png", "webp")):
        expected = np.asarray(Image.open(io.BytesIO(files[name])).convert("RGB")).transpose(2, 0, 1)
        np.testing.assert_array_equal(value.numpy(), expected)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        EncodedImageTransform()({"image": [str(tmp_path / "missing.jpg")], "label": [0]})
    with pytest.raises(ValueError, match="column 'image'"):
        EncodedImageTransform()({"img": images, "label": [0] * 6})


def test_collation_hands_encoded_images_over_as_one_batch_that_device_placement_leaves_on_the_host():
    """Pixel values stack as `default_data_collator` stacks them; `encoded_images` (even decoded ones of one size)
    become the batch's `pixel_values` as one `EncodedImageBatch`, which accelerate's `send_to_device` leaves alone
    while it moves the labels, and which `find_batch_size` skips for the labels."""
    from accelerate.utils import send_to_device
    from transformers.trainer_pt_utils import find_batch_size

    same = [{"pixel_values": torch.full((3, 4, 4), k, dtype=torch.uint8), "labels": k} for k in range(3)]
    stacked = collate_image_batch(same)
    assert torch.equal(stacked["pixel_values"], torch.stack([f["pixel_values"] for f in same]))
    assert stacked["labels"].tolist() == [0, 1, 2]
    for images in ([torch.arange(7, dtype=torch.uint8), torch.zeros(3, 6, 9, dtype=torch.uint8)],
                   [torch.zeros(3, 6, 9, dtype=torch.uint8), torch.ones(3, 6, 9, dtype=torch.uint8)]):
        features = [{ENCODED_IMAGES: image, "labels": label} for image, label in zip(images, (5, 2))]
        batch = collate_image_batch(features)
        assert set(batch) == {"pixel_values", "labels"} and isinstance(batch["pixel_values"], EncodedImageBatch)
        assert len(batch["pixel_values"]) == 2 and all(a is b for a, b in zip(batch["pixel_values"].images, images))
        assert batch["labels"].tolist() == [5, 2] and find_batch_size(batch) == 2
    placed = send_to_device(batch, torch.device("meta"))
    assert placed["pixel_values"] is batch["pixel_values"] and placed["labels"].device.type == "meta"


def test_batched_decoding_equals_per_file_decoding_and_falls_back_to_the_cpu(files, monkeypatch):
    """`decode_images` (one `decode_jpeg` call for the JPEGs of a batch) gives what `decode_rgb` gives file by file,
    decoded images passed through in their place; when the device's decoder refuses a file of the batch, the CPU
    decodes the batch; a decoder that cannot run at all is an error."""
    from mislas_hf.data import decode_rgb

    names = ["baseline", "png", "grey", "progressive"]
    images = [gpu_decode.encoded_or_decoded(files[name]) for name in names]
    expected = [decode_rgb(files[name]) for name in names]
    for image, reference in zip(decode_images(images, "cpu"), expected):
        assert torch.equal(image, reference)
    calls = []
    real_decode_jpeg = gpu_decode.decode_jpeg

    def refusing_device_decoder(batch, mode, **device):
        calls.append(device)
        if device:  # the call that names the device: refused, as nvJPEG refuses a file
            raise RuntimeError("Error while decoding JPEG images")
        return real_decode_jpeg(batch, mode=mode)

    monkeypatch.setattr(gpu_decode, "decode_jpeg", refusing_device_decoder)
    decoded = decode_images(images, "cpu")
    assert calls == [{"device": "cpu"}, {}]
    for image, reference in zip(decoded, expected):
        assert torch.equal(image, reference)

    def decoder_without_nvjpeg(batch, mode, **device):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(gpu_decode, "decode_jpeg", decoder_without_nvjpeg)
    with pytest.raises(RuntimeError, match="not compiled with nvJPEG"):  # no silent decoding on the CPU
        decode_images(images, "cpu")


def test_crop_parameters_draw_as_random_resized_crop_and_flip_half():
    """The boxes follow torchvision's `RandomResizedCrop.get_params(scale (0.08, 1), ratio (3/4, 4/3))` on the same
    sizes (area fraction, log aspect ratio, relative position: means within 4 standard errors), inside the image;
    flips have probability 0.5, independent of the box."""
    from torchvision.transforms import RandomResizedCrop

    draws, height, width = 2000, 375, 500
    torch.manual_seed(0)
    boxes, flips = draw_crop_parameters([(height, width)] * draws)
    theirs = [RandomResizedCrop.get_params(torch.empty(3, height, width), IMAGENET_CROP_SCALE, IMAGENET_CROP_RATIO)
              for _ in range(draws)]

    def statistics(drawn):
        top, left, box_height, box_width = np.asarray(drawn, dtype=np.float64).T
        assert top.min() >= 0 and left.min() >= 0 and (top + box_height).max() <= height
        assert (left + box_width).max() <= width
        return {
            "area": box_height * box_width / (height * width),
            "log_ratio": np.log(box_width / box_height),
            "top": top / np.maximum(height - box_height, 1),
            "left": left / np.maximum(width - box_width, 1),
        }

    ours, reference = statistics(boxes), statistics(theirs)
    for name in ours:
        error = np.sqrt((ours[name].var() + reference[name].var()) / draws)
        assert abs(ours[name].mean() - reference[name].mean()) < 4 * error, name
    flips = np.asarray(flips, dtype=np.float64)
    assert abs(flips.mean() - 0.5) < 4 * 0.5 / np.sqrt(draws)
    small = ours["area"] < 0.5
    assert abs(flips[small].mean() - flips[~small].mean()) < 4 * 0.5 * np.sqrt(1 / small.sum() + 1 / (~small).sum())


def test_decoding_and_cropping_on_the_cpu_equals_the_per_image_path(files):
    """With the same seed the device path, run on the CPU, gives exactly the CPU path's pixels: the training crops
    of `ImageNetTransform` + `augment_imagenet_batch` (the boxes and flips drawn in the same order, then the jitter),
    and the evaluation resize + centre crop + normalisation."""
    names = ["baseline", "progressive", "grey", "cmyk", "png", "exif"]
    items = [{"bytes": files[name], "path": None} for name in names]
    encoded_items = EncodedImageTransform()({"image": items, "label": [0] * 6})[ENCODED_IMAGES]
    batch = collate_image_batch([{ENCODED_IMAGES: value, "labels": 0} for value in encoded_items])["pixel_values"]
    for train in (True, False):
        torch.manual_seed(7)
        crops = make_transform(IMAGENET, train=train)({"image": items, "label": [0] * 6})["pixel_values"]
        expected = augment_imagenet_batch(torch.stack(crops), train)
        torch.manual_seed(7)
        got = augment_imagenet_images(batch, train, IMAGENET, device="cpu")
        assert got.dtype == torch.float32 and torch.equal(got, expected), train
    # a tensor batch (the CPU path's crops) is only jittered and normalised, with the preprocessing's statistics
    inaturalist = Preprocessing.reference("imagenet", mean=(0.466, 0.471, 0.380), std=(0.195, 0.194, 0.192))
    grey = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
    expected = (100 / 255 - torch.tensor(inaturalist.mean)) / torch.tensor(inaturalist.std)
    torch.testing.assert_close(augment_imagenet_images(grey, False, inaturalist), expected[None, :, None, None].expand(
        2, 3, 8, 8), atol=1e-5, rtol=0)


def test_the_gpus_float_resize_is_within_one_level_of_the_cpu_kernel(files):
    """On a GPU torchvision resizes uint8 crops through float32 and rounds; the CPU path uses its fixed-point uint8
    kernel. Emulated on the CPU for the crops of one batch: no pixel differs by more than one level (both round the
    same filter's output), and on average by less than 0.3 levels: the tolerance of the CPU / GPU comparison."""
    import torchvision.transforms.v2.functional as TF

    images = decode_images([gpu_decode.encoded_or_decoded(files[name]) for name in ("baseline", "grey")] * 8, "cpu")
    torch.manual_seed(1)
    boxes, flips = draw_crop_parameters([tuple(image.shape[-2:]) for image in images])
    fixed_point = resized_crops(images, boxes, flips, IMAGENET)
    float_path = torch.stack([
        TF.resize(image[None, :, top : top + height, left : left + width].float(), [224, 224], antialias=True)[0]
        .round().clamp(0, 255).to(torch.uint8)
        for image, (top, left, height, width) in zip(images, boxes)
    ])
    float_path = torch.stack([TF.horizontal_flip(c) if f else c for c, f in zip(float_path, flips)])
    difference = (fixed_point.int() - float_path.int()).abs()
    assert difference.max().item() <= 1 and difference.float().mean().item() < 0.3


def test_the_trainer_collates_and_finishes_encoded_batches(files, tiny_cifar10_model, tmp_path):
    """Through `DeviceBatchTrainer`'s own loader (`collate_image_batch` by default, accelerate's device placement)
    and `_prepare_inputs`: the encoded batch of a dataset with `EncodedImageTransform` becomes the float batch the
    CPU path gives for the same images and seed."""
    import datasets

    from mislas_hf.trainer import DeviceBatchTrainer

    names = ["baseline", "png", "grey", "progressive"]
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": files[name], "path": None} for name in names], "label": [0, 1, 2, 3]},
        features=datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")}),
    )
    dataset.set_transform(EncodedImageTransform())
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, report_to="none",
        dataloader_num_workers=0, remove_unused_columns=False,  # as MislasTrainingArguments: the transform reads them
    )
    trainer = DeviceBatchTrainer(
        model=tiny_cifar10_model(), args=args, train_dataset=dataset,
        batch_augmentation=functools.partial(augment_imagenet_images, preprocessing=IMAGENET),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert isinstance(batch["pixel_values"], EncodedImageBatch)
    order = batch["labels"].tolist()
    trainer.model.train()
    torch.manual_seed(3)
    prepared = trainer._prepare_inputs(batch)
    torch.manual_seed(3)
    items = [{"bytes": files[names[index]], "path": None} for index in order]
    crops = make_transform(IMAGENET, train=True)({"image": items, "label": order})["pixel_values"]
    assert torch.equal(prepared["pixel_values"], augment_imagenet_batch(torch.stack(crops), True))
    assert prepared["labels"].tolist() == order


def test_load_splits_leaves_jpegs_encoded_only_for_a_cuda_device(files, tmp_path, monkeypatch):
    """Own images with an ImageNet-stem backbone (the `imagenet` augmentation): on the CPU the splits yield the
    per-image path's uint8 crops, with a CUDA training device (faked) the workers' encoded JPEGs, in both splits."""
    from mislas_hf.scripts.arguments import parse_arguments
    from mislas_hf.scripts.data_setup import load_splits
    from mislas_hf.scripts.model_setup import plan_model
    from mislas_hf.training_args import MislasTrainingArguments

    for split in ("train", "test"):
        for name in ("ant", "bee"):
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "0.jpg").write_bytes(files["baseline"])
    flags = [
        "--train_dir", str(tmp_path / "train"), "--test_dir", str(tmp_path / "test"), "--backbone", "resnet10",
        "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu", "true",
    ]
    model_args, data_args, training_args, _ = parse_arguments(flags)
    _, _, train, _, test = load_splits(data_args, training_args, plan_model(model_args))
    assert [tuple(split[0]["pixel_values"].shape) for split in (train, test)] == [(3, 224, 224)] * 2
    monkeypatch.setattr(MislasTrainingArguments, "device", property(lambda self: torch.device("cuda")))
    _, _, train, _, test = load_splits(data_args, training_args, plan_model(model_args))
    for split in (train, test):
        assert bytes(split[0][ENCODED_IMAGES].numpy()) == files["baseline"]
