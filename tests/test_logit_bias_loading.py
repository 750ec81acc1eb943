"""A model calibrated for a label shift (`config.temperature` and `config.logit_bias`) keeps its probabilities
`softmax(z / T + b)` after `save_pretrained`: with the package, and through AutoModel and
`pipeline("image-classification")` with `trust_remote_code` in a process without it (offline, Hub-layout cache)."""

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image

from mislas_hf import MislasForImageClassification
from mislas_hf.data import BENCHMARKS

REPO_ID = "mislas-org/mislas-resnet32-tiny-prior-corrected"
CLASS_TEMPERATURES = [0.8, 1.1, 1.4, 1.7, 2.0, 2.3, 0.9, 1.2, 1.5, 3.0]


def test_temperature_and_logit_bias_reload_everywhere(tmp_path, tiny_cifar10_model, save_to_hub_cache,
                                                      load_without_package, monkeypatch):
    model = tiny_cifar10_model().eval()
    processor = BENCHMARKS["cifar10-lt"].preprocessing.image_processor()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    pixel_values = processor(image, return_tensors="pt").pixel_values
    with torch.no_grad():
        raw = model(pixel_values).logits
        # per-class scale s of Eq. (4) so that the softmax is neither saturated nor flat
        model.classifier.scale.copy_(torch.linspace(0.5, 1.5, 10) * 2 / raw.std())
        uncalibrated = model(pixel_values).logits.double()

    # the prior correction from the training prior (CIFAR-10-LT, IF 100) to a uniform test prior
    counts = torch.tensor(model.config.class_counts, dtype=torch.float64)
    logit_bias = (torch.log(torch.tensor(0.1, dtype=torch.float64)) - torch.log(counts / counts.sum())).tolist()
    model.config.temperature, model.config.logit_bias = CLASS_TEMPERATURES, logit_bias
    model.config.source_prior = (counts / counts.sum()).tolist()
    expected = (uncalibrated / torch.tensor(CLASS_TEMPERATURES, dtype=torch.float64)
                + torch.tensor(logit_bias, dtype=torch.float64)).softmax(-1)[0]
    # the bias changes the probabilities beyond the temperature's doing
    assert (expected - (uncalibrated / torch.tensor(CLASS_TEMPERATURES)).softmax(-1)[0]).abs().max() > 0.05

    cache = tmp_path / "hub_cache"
    save_to_hub_cache(model, processor, cache, REPO_ID)
    image.save(tmp_path / "image.png")
    torch.save(pixel_values, tmp_path / "pixel_values.pt")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    reloaded = MislasForImageClassification.from_pretrained(REPO_ID, cache_dir=cache).eval()
    assert reloaded.config.logit_bias == pytest.approx(logit_bias, rel=1e-12)
    assert reloaded.config.source_prior == pytest.approx(model.config.source_prior, rel=1e-12)
    with torch.no_grad():
        assert (reloaded(pixel_values).logits.softmax(-1)[0].double() - expected).abs().max().item() < 1e-6

    outputs = load_without_package(cache, REPO_ID, tmp_path / "image.png", tmp_path / "pixel_values.pt", tmp_path)
    remote = torch.tensor(outputs["logits"], dtype=torch.float64).softmax(-1)[0]
    assert (remote - expected).abs().max().item() < 1e-6
    names = [model.config.id2label[k] for k in range(10)]
    scores = {prediction["label"]: prediction["score"] for prediction in outputs["predictions"]}
    pipeline_probabilities = torch.tensor([scores[name] for name in names], dtype=torch.float64)
    assert (pipeline_probabilities - expected).abs().max().item() < 1e-6
