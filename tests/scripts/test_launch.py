"""Thread count, precision and batch per process under each launcher (mislas_hf.scripts.launch.use_cpu_cores,
MislasTrainingArguments.bf16 and .total_train_batch_size).

`accelerate launch` without an accelerate config sets OMP_NUM_THREADS=1 for its process and `torchrun` does so for
several processes; the run must then use the machine's physical cores (split between the local processes, as
accelerate splits them for `--cpu`), while a thread count the user gave (their OMP_NUM_THREADS or
`--num_cpu_threads_per_process`) stays. The bf16 default (on where the hardware has native bf16) must survive
`accelerate launch`'s ACCELERATE_MIXED_PRECISION=no: `--fake_bf16` makes this CPU report native bf16. A global batch
(`total_train_batch_size`, Table 6's 256) is split between the processes and the gradient accumulation steps.
"""

import json
import os
import subprocess
import sys

import psutil
import pytest

from mislas_hf.training_args import MislasTrainingArguments, native_bf16_available

PROBE = """
import json, sys
import mislas_hf.training_args as training_args_module
if "--fake_bf16" in sys.argv:
    training_args_module.native_bf16_available = lambda use_cpu=False: True
from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.scripts.launch import use_cpu_cores
from mislas_hf.trainer import MislasTrainer
from mislas_hf.training_args import MislasTrainingArguments

args = MislasTrainingArguments(
    output_dir=sys.argv[1], report_to="none", stage="1", total_train_batch_size=256, gradient_accumulation_steps=2
)
threads = use_cpu_cores(args)
model = MislasForImageClassification(MislasConfig(num_labels=3, class_counts=[3, 2, 1]))
trainer = MislasTrainer(model=model, args=args)
result = {
    "threads": threads, "mixed_precision": trainer.accelerator.mixed_precision, "world_size": args.world_size,
    "per_device_train_batch_size": args.per_device_train_batch_size,
}
print("RESULT " + json.dumps(result))
"""


def launch(tmp_path, launcher: list[str], *probe_flags: str, omp_num_threads: str | None = None) -> subprocess.Popen:
    """Start the probe under `launcher` with no accelerate config (HF_HOME is empty) and OMP_NUM_THREADS only when
    given, as the user's own setting."""
    tmp_path.mkdir()
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    command = [sys.executable, "-m", *launcher, str(script), str(tmp_path / "out"), *probe_flags]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def results(process: subprocess.Popen) -> list[dict]:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return [json.loads(line[len("RESULT "):]) for line in output.splitlines() if line.startswith("RESULT ")]


def test_each_launcher_uses_the_cores_and_keeps_the_precision_default(tmp_path):
    cores = psutil.cpu_count(logical=False)
    accelerate = ["accelerate.commands.launch"]
    runs = {  # started together: four interpreter start-ups overlap
        "accelerate, no thread count": launch(tmp_path / "a", accelerate, "--fake_bf16"),
        "accelerate, user's OMP_NUM_THREADS": launch(tmp_path / "b", accelerate, omp_num_threads="1"),
        "accelerate --num_cpu_threads_per_process": launch(
            tmp_path / "c", [*accelerate, "--num_cpu_threads_per_process", "1"]
        ),
        "torchrun, 2 processes": launch(
            tmp_path / "d", ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"], "--fake_bf16"
        ),
    }
    found = {name: results(process) for name, process in runs.items()}

    # one process, no thread count given: all physical cores, not accelerate's 1; bf16 default kept (native here)
    one_process = {"world_size": 1, "per_device_train_batch_size": 128}  # 256 / (1 process x 2 accumulation steps)
    assert found["accelerate, no thread count"] == [{"threads": cores, "mixed_precision": "bf16", **one_process}]
    # the user's choice stays; the precision default is this CPU's real one
    real_default = "bf16" if native_bf16_available(use_cpu=True) else "no"
    for name in ("accelerate, user's OMP_NUM_THREADS", "accelerate --num_cpu_threads_per_process"):
        assert found[name] == [{"threads": 1, "mixed_precision": real_default, **one_process}], name
    # two local processes share the cores and the global batch
    assert found["torchrun, 2 processes"] == [
        {"threads": max(1, cores // 2), "mixed_precision": "bf16", "world_size": 2, "per_device_train_batch_size": 64}
    ] * 2


def test_a_global_batch_that_does_not_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"total_train_batch_size=255 does not split into 1 processes x 2 gradient"):
        MislasTrainingArguments(output_dir=str(tmp_path), total_train_batch_size=255, gradient_accumulation_steps=2)
