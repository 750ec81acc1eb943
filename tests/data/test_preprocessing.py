"""mislas_hf.data.preprocessing: `Preprocessing` (the reference's, or a checkpoint's image processor's) and the image
processor saved with a model, checked against torchvision and transformers computed here."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode, v2
from transformers import (
    AutoImageProcessor,
    CLIPImageProcessor,
    ConvNextImageProcessor,
    EfficientNetImageProcessor,
    EfficientNetImageProcessorPil,
    ViTImageProcessor,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from mislas_hf.data import (
    BENCHMARKS,
    CIFAR_MEAN,
    CIFAR_STD,
    INATURALIST_MEAN,
    INATURALIST_STD,
    Preprocessing,
    augment_imagenet_batch,
    make_transform,
)
from mislas_hf.data.preprocessing import RESAMPLING

CIFAR = Preprocessing.reference("cifar")
"""The reference's CIFAR preprocessing: 32x32, CIFAR mean/std, the `cifar` augmentation."""
IMAGENET = Preprocessing.reference("imagenet")
"""The reference's ImageNet preprocessing: 224 crop of a 256 resize, ImageNet mean/std, the `imagenet` augmentation."""


def textured_picture(width=300, height=400) -> Image.Image:
    """A non-square RGB picture: a gradient in x, one in y, and a sinusoidal pattern (not linear, so that a wrong
    resize filter or crop offset shows)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [0.8 * x * 255 / width, 0.6 * y * 255 / height, 128 + 60 * np.sin(x / 7) * np.cos(y / 5)]
    return Image.fromarray(np.round(np.stack(channels, axis=-1)).astype(np.uint8))


# ----------------------------------------------------------------------------------------------- the reference's


def test_reference_preprocessings_and_their_refusals():
    assert (CIFAR.augmentation, CIFAR.image_size, CIFAR.resize_size, CIFAR.crop_pct) == ("cifar", 32, 32, 1.0)
    assert (CIFAR.mean, CIFAR.std, CIFAR.resample) == (CIFAR_MEAN, CIFAR_STD, "bilinear")
    assert (IMAGENET.augmentation, IMAGENET.image_size, IMAGENET.resize_size) == ("imagenet", 224, 256)
    assert IMAGENET.mean == tuple(IMAGENET_DEFAULT_MEAN) and IMAGENET.std == tuple(IMAGENET_DEFAULT_STD)
    assert IMAGENET.resample == "bilinear"
    inat = BENCHMARKS["inat2018"].preprocessing
    assert inat == Preprocessing.reference("imagenet", mean=INATURALIST_MEAN, std=INATURALIST_STD)
    assert (inat.image_size, inat.resize_size, inat.mean, inat.std) == (224, 256, INATURALIST_MEAN, INATURALIST_STD)
    # another input size keeps the reference's 256 / 224 ratio: 448 / 0.875 = 512
    assert Preprocessing.reference("imagenet", image_size=448).resize_size == 512
    assert Preprocessing.reference("cifar", image_size=64).resize_size == 64
    with pytest.raises(ValueError, match="augmentation='unknown'"):
        Preprocessing.reference("unknown")
    # replace: the changes that are not None, validated as the constructor validates them
    assert IMAGENET.replace(image_size=None, resample="bicubic") == Preprocessing(
        "imagenet", 224, 0.875, tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), "bicubic"
    )
    with pytest.raises(ValueError, match="resample='cubic'"):
        IMAGENET.replace(resample="cubic")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("augmentation", "svhn", "augmentation='svhn'"),
        ("image_size", 0, "image_size=0"),
        ("crop_pct", 0.0, "crop_pct=0.0"),
        ("crop_pct", 1.5, "crop_pct=1.5"),
        ("resample", "cubic", "resample='cubic'"),
        ("mean", (0.5, 0.5), r"mean=\(0.5, 0.5\)"),
        ("std", (0.2,) * 4, r"std=\(0.2, 0.2, 0.2, 0.2\)"),
    ],
)
def test_preprocessing_refuses_a_bad_value_naming_the_field(field, value, match):
    values = dict(augmentation="imagenet", image_size=224, crop_pct=0.875, mean=(0.5,) * 3, std=(0.2,) * 3)
    with pytest.raises(ValueError, match=match):
        Preprocessing(**{**values, field: value})


def test_description_says_what_the_processor_does():
    assert IMAGENET.description() == (
        "shorter side resized to 256 (bilinear), centre crop 224, pixel values rescaled to [0, 1] and normalised "
        "with mean [0.485, 0.456, 0.406] and std [0.229, 0.224, 0.225]"
    )
    assert CIFAR.description().startswith("32x32 RGB input, pixel values rescaled to [0, 1] and normalised with mean")


# ----------------------------------------------------------------------------------------------- image processor


def test_reference_imagenet_processor_is_the_224_crop_of_a_256_resize(tmp_path):
    """The reference's evaluation transform (`Resize(256)`, `CenterCrop(224)`, `ToTensor()`, `Normalize`, torchvision
    on the PIL image) on a 300 x 400 picture: the image processor gives it (both resize with PIL), and once saved and
    reloaded (transformers' torchvision backend) up to the antialiasing difference of the other processor tests."""
    picture = textured_picture(300, 400)
    reference = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    )(picture)
    assert reference.shape == (3, 224, 224)
    processor = IMAGENET.image_processor()
    got = processor(picture, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)
    # by hand: 300 x 400 -> 256 x 341 (shorter side 256), crop rows 58..281 and columns 16..239
    by_hand = np.asarray(picture.resize((256, 341), Image.BILINEAR), dtype=np.float64)[58:282, 16:240] / 255
    by_hand = ((by_hand - IMAGENET_DEFAULT_MEAN) / IMAGENET_DEFAULT_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(got.numpy(), by_hand, atol=1e-5)
    processor.save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)(picture, return_tensors="pt")["pixel_values"][0]
    difference = (reloaded - reference).abs()
    assert difference.max() < 0.02 and difference.mean() < 0.005  # torchvision's vs PIL's antialiasing


def test_bicubic_imagenet_eval_transform_is_torchvision_bicubic_resize_and_centre_crop():
    picture = textured_picture(300, 400)
    preprocessing = IMAGENET.replace(resample="bicubic")
    got = make_transform(preprocessing, train=False)({"image": [picture], "label": [0]})["pixel_values"][0]
    pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()
    expected = v2.Compose(
        [v2.Resize(256, interpolation=InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(224)]
    )(pixels)
    assert got.dtype == torch.uint8 and expected.dtype == torch.uint8 and got.shape == (3, 224, 224)
    assert torch.equal(got, expected)
    bilinear = make_transform(IMAGENET, train=False)({"image": [picture], "label": [0]})["pixel_values"][0]
    assert not torch.equal(bilinear, got)  # the filter is the preprocessing's, not a fixed one


@pytest.mark.slow
def test_cifar_image_processor_reloads_and_matches_the_eval_transform(cifar10, tmp_path):
    CIFAR.image_processor().save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    batch = cifar10["test"][:8]
    expected = torch.stack(make_transform(CIFAR, train=False, image_column="img")(batch)["pixel_values"])
    got = processor(batch["img"], return_tensors="pt")["pixel_values"]
    assert got.shape == (8, 3, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert processor(Image.new("RGB", (64, 96)), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


def test_imagenet_image_processor_matches_the_eval_transform(tmp_path, gradient_image):
    IMAGENET.image_processor().save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    image, _ = gradient_image()
    natural = Image.open(_natural_image(tmp_path)).resize((400, 300), Image.BICUBIC)
    transform = make_transform(IMAGENET, train=False)
    for picture, max_tol, mean_tol in ((image, 0.02, 0.005), (natural, 0.1, 0.01)):
        got = processor(picture, return_tensors="pt")["pixel_values"][0]
        raw = transform({"image": [picture], "label": [0]})["pixel_values"][0]
        expected = augment_imagenet_batch(raw[None], train=False)[0]
        assert got.shape == (3, 224, 224)
        difference = (got - expected).abs()
        assert difference.max() < max_tol and difference.mean() < mean_tol  # torchvision's vs PIL's antialiasing
    with pytest.raises(ValueError, match="augmentation"):
        Preprocessing.reference("places")


def _natural_image(tmp_path):
    """A smooth, non-linear picture: a few blurred discs of colour, saved as PNG."""
    y, x = np.mgrid[0:60, 0:80].astype(np.float64)
    picture = np.zeros((60, 80, 3))
    for cx, cy, radius, colour in ((20, 20, 12, (255, 40, 0)), (55, 35, 18, (0, 200, 90)), (40, 50, 8, (30, 60, 255))):
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))[..., None]
        picture += weight * np.asarray(colour)
    path = tmp_path / "natural.png"
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------- from_image_processor


def test_from_image_processor_reads_a_shortest_edge_and_crop_pct_processor():
    """The layout of microsoft/resnet-50's and ConvNeXt's processors: resize to shortest_edge / crop_pct, crop."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    processor = ConvNextImageProcessor(
        size={"shortest_edge": 224}, crop_pct=0.875, resample=PILImageResampling.BICUBIC, image_mean=list(mean),
        image_std=list(std),
    )
    preprocessing = Preprocessing.from_image_processor(processor, "imagenet")
    assert (preprocessing.image_size, preprocessing.resize_size, preprocessing.resample) == (224, 256, "bicubic")
    assert (preprocessing.mean, preprocessing.std, preprocessing.augmentation) == (mean, std, "imagenet")


def test_from_image_processor_reads_a_fixed_size_processor_without_crop():
    """ViT's layout: resize to height x width, no crop."""
    processor = ViTImageProcessor(size={"height": 384, "width": 384})
    preprocessing = Preprocessing.from_image_processor(processor, "imagenet")
    assert (preprocessing.image_size, preprocessing.resize_size) == (384, 384)
    assert preprocessing.mean == tuple(processor.image_mean) and preprocessing.std == tuple(processor.image_std)


def test_from_image_processor_reads_a_shortest_edge_and_crop_size_processor():
    """CLIP's layout: resize the shorter side to shortest_edge, centre crop crop_size (bicubic)."""
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    preprocessing = Preprocessing.from_image_processor(processor, "imagenet")
    assert (preprocessing.image_size, preprocessing.resize_size, preprocessing.resample) == (224, 224, "bicubic")
    assert preprocessing.mean == tuple(processor.image_mean) and preprocessing.std == tuple(processor.image_std)


def test_from_image_processor_refuses_a_resample_that_is_not_a_pil_filter():
    processor = ConvNextImageProcessor(size={"shortest_edge": 224})
    processor.resample = 7
    with pytest.raises(ValueError, match=r"ConvNextImageProcessor resamples with 7, not one of PIL's filters"):
        Preprocessing.from_image_processor(processor, "imagenet")


def efficientnet_b0_processor(backend=EfficientNetImageProcessor):
    """The image processor of google/efficientnet-b0 (its preprocessor_config.json): 224 x 224 NEAREST resize, a
    crop_size of 289 it does not apply (do_center_crop false), ImageNet's mean with its own std."""
    return backend(
        size={"height": 224, "width": 224}, crop_size={"height": 289, "width": 289}, do_center_crop=False,
        resample=PILImageResampling.NEAREST, image_mean=[0.485, 0.456, 0.406],
        image_std=[0.47853944, 0.4732864, 0.47434163],
    )


@pytest.mark.parametrize("backend", [EfficientNetImageProcessor, EfficientNetImageProcessorPil])
def test_nearest_resampling_of_efficientnet_gives_the_processors_own_output(backend, tmp_path):
    """google/efficientnet-*'s NEAREST processor: read as 224 px, no crop, nearest, its normalisation (with
    include_top) as mean/std on [0, 1] pixels; on a 300 x 300 picture (where its
    224 x 224 resize is the shorter side's) the evaluation transform plus normalisation gives the processor's own
    output, both backends (PIL's NEAREST; torchvision's NEAREST_EXACT); so does the image processor saved with the
    model (PIL, and reloaded: torchvision), here also on a 300 x 450 picture, which it resizes and crops as the
    transform does."""
    processor = efficientnet_b0_processor(backend)
    preprocessing = Preprocessing.from_image_processor(processor, "imagenet")
    # include_top divides by image_std twice: the std on [0, 1] pixels is its square, ImageNet's (0.229, 0.224, 0.225)
    assert (preprocessing.augmentation, preprocessing.image_size, preprocessing.crop_pct) == ("imagenet", 224, 1.0)
    assert (preprocessing.mean, preprocessing.resample) == ((0.485, 0.456, 0.406), "nearest")
    assert preprocessing.std == pytest.approx(IMAGENET_DEFAULT_STD, abs=1e-7)
    transform = make_transform(preprocessing, train=False)

    def ours(picture):
        raw = transform({"image": [picture], "label": [0]})["pixel_values"][0]
        return augment_imagenet_batch(raw[None], train=False, mean=preprocessing.mean, std=preprocessing.std)[0]

    square = textured_picture(300, 300)
    torch.testing.assert_close(ours(square), processor(square, return_tensors="pt")["pixel_values"][0], atol=1e-5,
                               rtol=0)
    # nearest by hand: output pixel i takes source pixel floor((i + 0.5) * 300 / 224), as PIL does
    rows = np.floor((np.arange(224) + 0.5) * 300 / 224).astype(int)
    by_hand = np.asarray(square, dtype=np.float64)[rows][:, rows] / 255
    by_hand = ((by_hand - np.asarray(preprocessing.mean)) / np.asarray(preprocessing.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(ours(square).numpy(), by_hand, atol=1e-5)
    saved = preprocessing.image_processor()
    saved.save_pretrained(tmp_path)
    for picture in (square, textured_picture(300, 450)):  # 256 x 384, cropped: no source pixel centre on a tie
        for reloaded in (saved, AutoImageProcessor.from_pretrained(tmp_path)):
            got = reloaded(picture, return_tensors="pt")["pixel_values"][0]
            torch.testing.assert_close(ours(picture), got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"])
def test_every_pil_filter_is_read_and_resizes_as_pil_does(resample):
    """Each of PIL's filters round-trips through the saved image processor's code, and the evaluation transform
    resizes a 300 x 450 picture with it as PIL does (to 256 x 384, centre crop 224): equal pixels for nearest
    (torchvision's NEAREST_EXACT; the picture's sizes leave no source pixel centre on a tie) and for box, hamming
    and lanczos (resized by PIL itself); torchvision's antialiased bilinear and bicubic within a few grey levels."""
    preprocessing = IMAGENET.replace(resample=resample)
    processor = preprocessing.image_processor()
    assert processor.resample == RESAMPLING[resample] == getattr(PILImageResampling, resample.upper())
    assert Preprocessing.from_image_processor(processor, "imagenet") == preprocessing
    picture = textured_picture(300, 450)
    got = make_transform(preprocessing, train=False)({"image": [picture], "label": [0]})["pixel_values"][0]
    resized = np.asarray(picture.resize((256, 384), RESAMPLING[resample]), dtype=np.int64)[80:304, 16:240]
    difference = np.abs(got.permute(1, 2, 0).numpy().astype(np.int64) - resized)
    if resample in ("bilinear", "bicubic"):
        assert difference.max() <= 3 and difference.mean() < 0.5
    else:
        assert difference.max() == 0


@pytest.mark.parametrize("resample", ["nearest", "lanczos"])
def test_cifar_transform_fits_other_sizes_with_the_filter_as_the_image_processor_does(resample):
    """The `cifar` transforms (`FitToSquare`) bring a 40 x 28 picture to 32 x 32 with the filter (shorter side
    resized, centre crop) as the saved image processor does: equal pixels."""
    preprocessing = CIFAR.replace(resample=resample)
    picture = textured_picture(40, 28)
    got = make_transform(preprocessing, train=False)({"image": [picture], "label": [0]})["pixel_values"][0]
    expected = preprocessing.image_processor()(picture, return_tensors="pt")["pixel_values"][0]
    assert got.shape == (3, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["cifar", "imagenet", "inat2018"])
def test_image_processor_round_trips_to_the_same_preprocessing(name, tmp_path):
    preprocessing = BENCHMARKS[name].preprocessing if name == "inat2018" else Preprocessing.reference(name)
    processor = preprocessing.image_processor()
    assert Preprocessing.from_image_processor(processor, preprocessing.augmentation) == preprocessing
    processor.save_pretrained(tmp_path)  # as a checkpoint's processor comes back: torchvision backend
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert Preprocessing.from_image_processor(reloaded, preprocessing.augmentation) == preprocessing
