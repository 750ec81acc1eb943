"""Loading a saved model by its Hub repo id, offline: with the package, with `trust_remote_code` in a process that
cannot import the package, and through `pipeline`.

These machines cannot reach the Hub, so the repo is laid out in a temporary `HF_HUB_CACHE` exactly as huggingface_hub
stores a download (`models--ORG--NAME/refs/main` holding the revision, files under `snapshots/<revision>/`) and every
load runs with `HF_HUB_OFFLINE=1`.
"""

from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from mislas_hf import MislasForImageClassification
from mislas_hf.data import BENCHMARKS

REPO_ID = "mislas-org/mislas-resnet32-tiny"
REVISION = "0123456789abcdef0123456789abcdef01234567"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_PREPROCESSING = BENCHMARKS["cifar10-lt"].preprocessing


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory, tiny_cifar10_model):
    """A ResNet-32 (10 labels, class counts, CIFAR image processor) in a Hub-layout cache, and its reference outputs
    on one image."""
    root = tmp_path_factory.mktemp("hub_loading")
    model = tiny_cifar10_model().eval()
    assert [model.config.id2label[k] for k in range(10)] == CLASS_NAMES
    processor = CIFAR_PREPROCESSING.image_processor()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    pixel_values = processor(image, return_tensors="pt").pixel_values
    with torch.no_grad():
        raw = model(pixel_values).logits
        # per-class scale s of Eq. (4) so that the softmax is neither saturated nor flat
        model.classifier.scale.copy_(torch.linspace(0.5, 1.5, 10) * 2 / raw.std())
        logits = model(pixel_values).logits

    cache = root / "hub_cache"
    repo_folder = cache / ("models--" + REPO_ID.replace("/", "--"))
    model.save_pretrained(repo_folder / "snapshots" / REVISION)
    processor.save_pretrained(repo_folder / "snapshots" / REVISION)
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(REVISION)
    image.save(root / "image.png")
    torch.save(pixel_values, root / "pixel_values.pt")
    return SimpleNamespace(root=root, cache=cache, pixel_values=pixel_values, logits=logits)


def test_reference_outputs_are_informative(hub_repo):
    probabilities = hub_repo.logits.softmax(-1)[0]
    assert 0.2 < probabilities.max() < 0.95 and len(set(probabilities.argsort().tolist())) == 10


def test_from_pretrained_by_repo_id_with_the_package(hub_repo, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = MislasForImageClassification.from_pretrained(REPO_ID, cache_dir=hub_repo.cache).eval()
    with torch.no_grad():
        logits = model(hub_repo.pixel_values).logits
    assert (logits - hub_repo.logits).abs().max().item() < 1e-6
    # with torchvision installed (a dependency) AutoImageProcessor picks the torchvision backend of the saved PIL
    # processor: the same rescale and normalisation in another order of float32 operations
    processor = AutoImageProcessor.from_pretrained(REPO_ID, cache_dir=hub_repo.cache)
    pixel_values = processor(Image.open(hub_repo.root / "image.png"), return_tensors="pt").pixel_values
    torch.testing.assert_close(pixel_values, hub_repo.pixel_values, atol=1e-6, rtol=0)


def without_package(load_without_package, hub_repo, repo_id) -> dict:
    """Logits and pipeline predictions of `repo_id` from a fresh interpreter that cannot import mislas_hf
    (conftest's `load_without_package`), for the image and pixel values of `hub_repo`."""
    return load_without_package(hub_repo.cache, repo_id, hub_repo.root / "image.png", hub_repo.root / "pixel_values.pt",
                                hub_repo.root)


def test_trust_remote_code_and_pipeline_without_the_package(hub_repo, load_without_package):
    outputs = without_package(load_without_package, hub_repo, REPO_ID)
    logits = torch.tensor(outputs["logits"])
    assert (logits - hub_repo.logits).abs().max().item() < 1e-6

    # the pipeline's scores are the softmax of the original model's logits on the processor's output
    probabilities = hub_repo.logits.softmax(-1)[0]
    predictions = outputs["predictions"]
    assert [p["label"] for p in predictions] == [CLASS_NAMES[k] for k in probabilities.argsort(descending=True)]
    scores = torch.tensor([p["score"] for p in predictions])
    expected = torch.tensor([probabilities[CLASS_NAMES.index(p["label"])].item() for p in predictions])
    assert (scores - expected).abs().max().item() < 1e-6


CALIBRATED_REPO_ID = "mislas-org/mislas-resnet32-tiny-calibrated"
CLASS_TEMPERATURES = [0.6, 0.9, 1.3, 1.7, 2.2, 2.6, 3.1, 1.1, 0.8, 4.0]


def add_calibrated_copy(hub_repo, repo_id, temperature):
    """The repo's model with `config.temperature` set, saved as `repo_id` in the same Hub-layout cache."""
    model = MislasForImageClassification.from_pretrained(hub_repo.cache / ("models--" + REPO_ID.replace("/", "--"))
                                                         / "snapshots" / REVISION)
    model.config.temperature = temperature
    model.config.calibration = {"method": "classwise_temperature", "fit_on": "a test fixture"}
    snapshot = hub_repo.cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / REVISION
    model.save_pretrained(snapshot)
    CIFAR_PREPROCESSING.image_processor().save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text(REVISION)


def test_calibrated_model_gives_softmax_of_logits_over_temperature_everywhere(
    hub_repo, monkeypatch, load_without_package
):
    """from_pretrained, AutoModel + trust_remote_code without the package, and pipeline: softmax(z / T) of the
    uncalibrated model's logits z, class-wise T here (T_k divides the logit of class k)."""
    add_calibrated_copy(hub_repo, CALIBRATED_REPO_ID, CLASS_TEMPERATURES)
    expected = (hub_repo.logits / torch.tensor(CLASS_TEMPERATURES)).softmax(-1)[0]
    assert (expected - hub_repo.logits.softmax(-1)[0]).abs().max() > 0.05  # the temperatures change the outputs

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = MislasForImageClassification.from_pretrained(CALIBRATED_REPO_ID, cache_dir=hub_repo.cache).eval()
    assert model.config.temperature == pytest.approx(CLASS_TEMPERATURES)
    with torch.no_grad():
        assert (model(hub_repo.pixel_values).logits.softmax(-1)[0] - expected).abs().max().item() < 1e-6

    outputs = without_package(load_without_package, hub_repo, CALIBRATED_REPO_ID)
    remote = torch.tensor(outputs["logits"]).softmax(-1)[0]
    assert (remote - expected).abs().max().item() < 1e-6
    scores = {prediction["label"]: prediction["score"] for prediction in outputs["predictions"]}
    pipeline_probabilities = torch.tensor([scores[name] for name in CLASS_NAMES])
    assert (pipeline_probabilities - expected).abs().max().item() < 1e-6


def test_scalar_temperature_through_the_pipeline_with_the_package(hub_repo, monkeypatch):
    from transformers import pipeline

    add_calibrated_copy(hub_repo, "mislas-org/mislas-resnet32-tiny-ts", 2.75)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    classifier = pipeline("image-classification", model="mislas-org/mislas-resnet32-tiny-ts",
                          model_kwargs={"cache_dir": hub_repo.cache})
    predictions = classifier(Image.open(hub_repo.root / "image.png"), top_k=10)
    expected = (hub_repo.logits / 2.75).softmax(-1)[0]
    scores = torch.tensor([{p["label"]: p["score"] for p in predictions}[name] for name in CLASS_NAMES])
    assert (scores - expected).abs().max().item() < 1e-6
