"""mislas_hf.modelcard (with its sections and metrics): model cards (metadata, model-index, body), and
mislas_hf.hub_upload: the push (`HfApi.upload_folder`, one commit)."""

import base64
import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from mislas_hf import MislasConfig
from mislas_hf.calibration import calibration_metrics, confidence_and_correctness, reliability_diagram
from mislas_hf.data import BENCHMARKS
from mislas_hf.hub_upload import push_model_folder
from mislas_hf.modelcard import build_model_card, write_model_card
from mislas_hf.modelcard_sections import TrainingLength

CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR_PREPROCESSING = BENCHMARKS["cifar10-lt"].preprocessing.description()
MODEL_ID = "mislas-org/mislas-resnet32-cifar10-lt"
FAKE_TOKEN = "hf_FakeTokenForTheTestsOnly0123456789abcd"
TRAINING_YAML = "dataset: cifar10-lt\nimbalance_factor: 100\nstage2_epochs: 10\nhub_token: " + FAKE_TOKEN + "\n"


@pytest.fixture
def model_folder(tmp_path, tiny_cifar10_model):
    """A real tiny saved model (ResNet-32, stage 2) with a reliability diagram and Trainer-style metrics."""
    model = tiny_cifar10_model()
    assert model.config.class_counts == CIFAR10_LT_COUNTS
    model.prepare_stage2("mislas", shift_bn=True)
    folder = tmp_path / "stage2"
    model.save_pretrained(folder)

    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    logits = generator.normal(size=(300, 10)) * 2
    logits[np.arange(300), labels] += generator.uniform(0, 4, size=300)  # mostly right, not perfectly calibrated
    metrics = calibration_metrics(logits, labels, class_counts=CIFAR10_LT_COUNTS, class_group_boundaries=[3, 7])
    probabilities = torch.softmax(torch.as_tensor(logits), -1).numpy()
    confidences, correct = confidence_and_correctness(probabilities, labels)
    reliability_diagram(confidences, correct, folder / "reliability_diagram.png")
    trainer_metrics = {f"eval_{key}": value for key, value in metrics.items()}
    trainer_metrics.update(eval_loss=0.9, eval_runtime=1.5, epoch=10.0)
    return folder, metrics, trainer_metrics


def write_card(folder, trainer_metrics, **overrides):
    arguments = dict(
        model_config=MislasConfig.from_pretrained(folder),
        metrics=trainer_metrics,
        dataset_id="uoft-cs/cifar10",
        dataset_name="CIFAR-10-LT (imbalance factor 100)",
        model_id=MODEL_ID,
        preprocessing=CIFAR_PREPROCESSING,
        training_config_yaml=TRAINING_YAML,
        diagram_filename="reliability_diagram.png",
        paper_metrics={"accuracy": 0.821, "ece": 0.037, "source": "Zhong et al. (CVPR 2021), Table 4"},
        provenance="Trained with recipes/train.py on CIFAR-10-LT.",
        base_model="mislas-org/mislas-resnet32-cifar10-lt-stage1",
    )
    arguments.update(overrides)
    return write_model_card(folder, **arguments)


def test_card_metadata_and_model_index_round_trip(model_folder):
    folder, metrics, trainer_metrics = model_folder
    path = write_card(folder, trainer_metrics)
    assert path == folder / "README.md"
    card = ModelCard.load(path)

    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0"
    assert data.datasets == ["uoft-cs/cifar10"]
    assert data.base_model == "mislas-org/mislas-resnet32-cifar10-lt-stage1"
    assert set(data.tags) == {"image-classification", "long-tailed-recognition", "calibration", "mislas"}
    assert data.model_name == MODEL_ID

    expected = {  # card convention: percent rounded to 2 decimals, NLL in nats rounded to 4
        "Top-1 accuracy (%)": ("accuracy", round(100 * metrics["accuracy"], 2)),
        "Many-shot accuracy (%)": ("accuracy", round(100 * metrics["many_accuracy"], 2)),
        "Medium-shot accuracy (%)": ("accuracy", round(100 * metrics["medium_accuracy"], 2)),
        "Few-shot accuracy (%)": ("accuracy", round(100 * metrics["few_accuracy"], 2)),
        "ECE (15 bins, %)": ("ece", round(100 * metrics["ece"], 2)),
        "MCE (15 bins, %)": ("mce", round(100 * metrics["mce"], 2)),
        "NLL (nats)": ("nll", round(metrics["nll"], 4)),
        "Classwise ECE (15 bins, %)": ("classwise_ece", round(100 * metrics["classwise_ece"], 2)),
        "Adaptive ECE (15 equal-mass bins, %)": ("adaptive_ece", round(100 * metrics["adaptive_ece"], 2)),
        "Many-shot ECE (15 bins, %)": ("ece", round(100 * metrics["many_ece"], 2)),
        "Medium-shot ECE (15 bins, %)": ("ece", round(100 * metrics["medium_ece"], 2)),
        "Few-shot ECE (15 bins, %)": ("ece", round(100 * metrics["few_ece"], 2)),
        "Brier score": ("brier", round(metrics["brier"], 4)),
    }
    results = data.eval_results
    assert sorted(result.metric_name for result in results) == sorted(expected)
    for result in results:
        assert result.task_type == "image-classification"
        assert result.dataset_type == "uoft-cs/cifar10"
        assert result.dataset_name == "CIFAR-10-LT (imbalance factor 100)"
        assert result.dataset_split == "test"
        assert (result.metric_type, result.metric_value) == expected[result.metric_name]
    # the paper's numbers are not in the model-index
    assert 82.1 not in [result.metric_value for result in results]


def test_card_body(model_folder):
    folder, metrics, trainer_metrics = model_folder
    text = write_card(folder, trainer_metrics).read_text()

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["reliability_diagram.png"]
    assert (folder / links[0]).is_file()
    assert "@inproceedings{zhong2021mislas" in text and "Improving Calibration for Long-Tailed Recognition" in text
    assert f'MislasForImageClassification.from_pretrained("{MODEL_ID}")' in text
    assert f'AutoModelForImageClassification.from_pretrained("{MODEL_ID}", trust_remote_code=True)' in text
    assert f'pipeline("image-classification", model="{MODEL_ID}", trust_remote_code=True)' in text
    assert "**Backbone:** resnet32 (CIFAR stem), feature size 64" in text
    assert f"image processor used for evaluation ({CIFAR_PREPROCESSING}); the pipeline applies it" in text
    assert "32x32 RGB input, pixel values rescaled to [0, 1] and normalised with mean [0.4914, 0.4822, 0.4465]" in text

    measured = text.index("### Measured by mislas_hf")
    paper = text.index("### Reported in the paper")
    assert measured < text.index(f"| Top-1 accuracy (%) | {100 * metrics['accuracy']:.2f} |") < paper
    assert f"| Top-5 accuracy (%) | {100 * metrics['top5_accuracy']:.2f} |" in text[measured:paper]
    assert f"| NLL (nats) | {metrics['nll']:.4f} |" in text[measured:paper]
    # second table: the long-tailed calibration metrics, not mixed into the first
    second = text.index("#### Calibration where long-tailed data need it")
    assert measured < second < paper
    assert f"| NLL (nats) | {metrics['nll']:.4f} |" in text[measured:second]
    assert f"| Classwise ECE (15 bins, %) | {100 * metrics['classwise_ece']:.2f} |" in text[second:paper]
    assert f"| Adaptive ECE (15 equal-mass bins, %) | {100 * metrics['adaptive_ece']:.2f} |" in text[second:paper]
    assert f"| Few-shot ECE (15 bins, %) | {100 * metrics['few_ece']:.2f} |" in text[second:paper]
    assert f"| Brier score | {metrics['brier']:.4f} |" in text[second:paper]
    assert "Post-hoc calibration" not in text  # an uncalibrated model
    assert "| Top-1 accuracy (%) | 82.10 |" in text[paper:]  # paper table holds only the paper's numbers
    assert "| ECE (15 bins, %) | 3.70 |" in text[paper:]

    # class-count profile of CIFAR-10-LT, IF 100: 12406 images, 5000 / 50, reference split 3 / 4 / 3
    assert "| Training images | 12406 |" in text
    assert "| Imbalance factor (max / min) | 100.00 |" in text
    assert "| Many / Medium / Few classes | 3 / 4 / 3 |" in text
    assert "stage2_epochs: 10" in text  # the training YAML, verbatim
    assert FAKE_TOKEN not in text and "hub_token: <redacted>" in text


@pytest.mark.parametrize(
    "change, message",
    [
        ({"eval_accuracy": 82.1}, r"metrics\['eval_accuracy'\] = 82.1 is not a fraction"),
        ({"eval_nll": None}, r"metrics lack nll"),
        ({"eval_ece": float("nan")}, r"metrics\['eval_ece'\] = nan is not a finite number"),
        ({"accuracy": 0.5}, r"'eval_accuracy' = .* and 'accuracy' = 0.5: keep one"),
    ],
)
def test_bad_metrics_are_rejected_before_writing(model_folder, change, message):
    folder, _, trainer_metrics = model_folder
    with pytest.raises(ValueError, match=message):
        write_card(folder, {**trainer_metrics, **change})
    assert not (folder / "README.md").exists()


def test_missing_or_escaping_diagram_is_rejected(model_folder):
    folder, _, trainer_metrics = model_folder
    (folder / "reliability_diagram.png").unlink()
    with pytest.raises(FileNotFoundError, match="reliability_diagram.png"):
        write_card(folder, trainer_metrics)
    with pytest.raises(ValueError, match="relative path inside the model folder"):
        write_card(folder, trainer_metrics, diagram_filename="../elsewhere.png")
    assert not (folder / "README.md").exists()


def test_card_without_measurements_has_no_model_index(model_folder):
    folder, _, _ = model_folder
    card = build_model_card(
        MislasConfig.from_pretrained(folder), None, None, "Places-LT", "org/converted", CIFAR_PREPROCESSING,
        provenance="Converted.",
    )
    assert card.data.eval_results is None
    assert "No test-set numbers have been measured by mislas_hf" in card.content
    with pytest.raises(ValueError, match="preprocessing is empty"):
        build_model_card(MislasConfig.from_pretrained(folder), None, None, "Places-LT", "org/converted", " ",
                         provenance="Converted.")


# ----------------------------------------------------------------------------------------------------------------
# Push: a local stand-in for the Hub
# ----------------------------------------------------------------------------------------------------------------


class FakeHub(ThreadingHTTPServer):
    """Answers the Hub API calls of create_repo / upload_folder (preupload, commit) and records them."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        self.requests, self.commits = [], []
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


class FakeHubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, b""))
        self._reply(404, {"error": "not served by the fake Hub"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        path = self.path.split("?")[0]
        if path == "/api/repos/create":
            payload = json.loads(body)
            return self._reply(200, {"url": f"{self.server.endpoint}/{payload['organization']}/{payload['name']}"})
        if path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path)
        if match:
            files = json.loads(body)["files"]
            return self._reply(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if re.fullmatch(r"/api/models/[^/]+/[^/]+/branch/[^/]+", path):
            return self._reply(200, {})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path)
        if match:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            self.server.commits.append({"repo": match.group(1), "revision": match.group(2), "lines": lines})
            return self._reply(
                200,
                {"commitUrl": f"{self.server.endpoint}/{match.group(1)}/commit/{'c' * 40}", "commitOid": "c" * 40},
            )
        return self._reply(404, {"error": f"{path} is not served by the fake Hub"})


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    huggingface_hub.close_session()  # a fresh HTTP client that sees NO_PROXY
    yield hub
    hub.shutdown()
    hub.server_close()
    huggingface_hub.close_session()


def test_push_uploads_the_folder_in_one_commit_without_leaking_the_token(model_folder, fake_hub, capsys):
    """The test machines cannot reach the Hub: a local HTTP server stands in for it and records what arrives."""
    folder, _, trainer_metrics = model_folder
    write_card(folder, trainer_metrics)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "upload.lock").write_text("local state, not for upload")
    local = {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and ".cache" not in path.parts
    }
    assert set(local) == {
        "config.json", "model.safetensors", "configuration_mislas.py", "modeling_mislas.py",
        "modeling_resnet_backbones.py", "modeling_vision_backbones.py", "README.md", "reliability_diagram.png",
    }

    info = push_model_folder(folder, MODEL_ID, "MiSLAS CIFAR-10-LT, stage 2", private=True)

    assert info.oid == "c" * 40
    assert len(fake_hub.commits) == 1
    commit = fake_hub.commits[0]
    assert commit["repo"] == MODEL_ID and commit["revision"] == "main"
    header, *files = commit["lines"]
    assert header == {"key": "header", "value": {"summary": "MiSLAS CIFAR-10-LT, stage 2", "description": ""}}
    uploaded = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in files}
    assert all(line["key"] == "file" for line in files)
    assert uploaded == local  # exactly the folder's files, byte for byte, hidden folders left out

    create = [r for r in fake_hub.requests if r[1] == "/api/repos/create"]
    assert len(create) == 1
    assert json.loads(create[0][3]) == {
        "name": MODEL_ID.split("/")[1], "organization": "mislas-org", "visibility": "private", "type": "model"
    }
    api_calls = [(path.split("?")[0], headers, body) for method, path, headers, body in fake_hub.requests
                 if method == "POST"]
    assert [path for path, _, _ in api_calls] == [
        "/api/repos/create", "/api/validate-yaml", f"/api/models/{MODEL_ID}/preupload/main",
        f"/api/models/{MODEL_ID}/commit/main",
    ]  # (huggingface_hub may also GET its agent registry, unauthenticated, best effort)
    for path, headers, body in api_calls:
        assert headers.get("authorization") == f"Bearer {FAKE_TOKEN}", path  # the token came from HF_TOKEN
    assert not any(FAKE_TOKEN.encode() in body for _, _, _, body in fake_hub.requests)
    assert not any(FAKE_TOKEN.encode() in content for content in uploaded.values())
    output = capsys.readouterr()
    assert FAKE_TOKEN not in output.out + output.err


def test_push_refuses_a_folder_without_card_before_any_request(model_folder, fake_hub):
    folder, _, _ = model_folder
    with pytest.raises(FileNotFoundError, match="has no README.md: write the card with write_model_card first"):
        push_model_folder(folder, MODEL_ID, "upload")
    assert fake_hub.requests == []


def test_push_to_a_branch_creates_it_first(model_folder, fake_hub):
    folder, _, trainer_metrics = model_folder
    write_card(folder, trainer_metrics)
    push_model_folder(folder, MODEL_ID, "stage 2 on a branch", revision="stage2")
    posts = [path for method, path, _, _ in fake_hub.requests if method == "POST"]
    assert posts.index(f"/api/models/{MODEL_ID}/branch/stage2") < posts.index(f"/api/models/{MODEL_ID}/commit/stage2")
    assert [commit["revision"] for commit in fake_hub.commits] == ["stage2"]


def test_card_of_a_calibrated_model_says_how_and_on_what_the_temperature_was_fit(model_folder):
    folder, _, trainer_metrics = model_folder
    config = MislasConfig.from_pretrained(folder)
    config.temperature = 1.8734
    config.calibration = {
        "method": "temperature",
        "fit_on": "the 10% per-class hold-out of the cifar10-lt training set (seed 0) that training left out, 1240 images",
        "held_out_images": 1240,
        "uncalibrated_model": "runs/ce/stage1",
        "held_out_nll_before": 1.23456,
        "held_out_nll_after": 0.98765,
    }
    text = write_card(folder, trainer_metrics, model_config=config).read_text()
    assert "**Post-hoc calibration:** the model divides its logits by a temperature T = 1.873" in text
    assert "Fit by temperature scaling (Guo et al., 2017), minimising the NLL on the 10% per-class hold-out" in text
    assert "never on the test split; held-out NLL 1.2346 before, 0.9877 after" in text
    config.temperature = [1.5] * 5 + [2.5] * 5
    config.calibration = config.calibration | {"method": "classwise_temperature", "regularization": 5.0}
    text = write_card(folder, trainer_metrics, model_config=config).read_text()
    assert "class-wise temperatures T_k from 1.5 to 2.5" in text
    assert "class-wise temperature scaling (one T per class, log T_k pulled towards the scalar T with a weight of 5 " in text


def test_brier_score_outside_its_range_is_rejected(model_folder):
    folder, _, trainer_metrics = model_folder
    with pytest.raises(ValueError, match=r"metrics\['eval_brier'\] = 2.5 is outside \[0, 2\]"):
        write_card(folder, trainer_metrics | {"eval_brier": 2.5})


def test_card_states_the_steps_and_epochs_trained_not_the_configured_ones(model_folder):
    folder, _, trainer_metrics = model_folder
    steps_per_epoch = math.ceil(sum(CIFAR10_LT_COUNTS) / 128)  # 12406 images in batches of 128: 97
    yaml = TRAINING_YAML + "stage1_epochs: 200\n"
    cut_short = TrainingLength(steps=40, epochs=40 / steps_per_epoch, planned_steps=40, images_per_step=128,
                               configured_epochs=200, max_steps=40)
    text = write_card(folder, trainer_metrics, training=cut_short, training_config_yaml=yaml).read_text()
    stated = (
        f"**Length of training (this stage):** 40 optimizer steps of 128 images, {40 / steps_per_epoch:.4g} epochs "
        "of the training set: `--max_steps 40` set the length, in place of the 200 epochs of the configuration."
    )
    assert stated in text
    assert text.index("## Training") < text.index(stated) < text.index("stage1_epochs: 200")

    full = TrainingLength(steps=200 * steps_per_epoch, epochs=200.0, planned_steps=200 * steps_per_epoch,
                          images_per_step=128, configured_epochs=200)
    text = write_card(folder, trainer_metrics, training=full).read_text()
    assert f"{200 * steps_per_epoch} optimizer steps of 128 images, 200 epochs of the training set, as configured." \
        in text

    stopped = TrainingLength(steps=150, epochs=150 / steps_per_epoch, planned_steps=200 * steps_per_epoch,
                             images_per_step=128, configured_epochs=200)
    text = write_card(folder, trainer_metrics, training=stopped).read_text()
    assert f"{150 / steps_per_epoch:.4g} epochs of the training set: stopped before the {200 * steps_per_epoch} " \
           "steps (200 epochs) planned." in text


def test_card_of_weights_not_trained_here_states_no_length(model_folder):
    folder, _, trainer_metrics = model_folder
    assert "Length of training" not in write_card(folder, trainer_metrics).read_text()
    with pytest.raises(ValueError, match="TrainingLength.steps = 0: .* pass training=None"):
        TrainingLength(steps=0, epochs=0.0, planned_steps=10, images_per_step=128, configured_epochs=200)
