"""Thread count, precision and batch per process under each launcher (mislas_hf.scripts.launch.use_cpu_cores,
MislasTrainingArguments.bf16 and .total_train_batch_size), and the thread count chosen from the free cores and
followed during training (mislas_hf.cpu_threads).

`accelerate launch` without an accelerate config sets OMP_NUM_THREADS=1 for its process and `torchrun` does so for
several processes; the run must then use the cores other processes leave free (split between the local processes),
while a thread count the user gave (their OMP_NUM_THREADS or `--num_cpu_threads_per_process`) stays. `--idle_cores`
makes the probe see no other load, so that the count is the machine's. The bf16 default (on where the hardware has
native bf16) must survive `accelerate launch`'s ACCELERATE_MIXED_PRECISION=no: `--fake_bf16` makes this CPU report
native bf16. A global batch (`total_train_batch_size`, Table 6's 256) is split between the processes and the gradient
accumulation steps.
"""

import collections
import itertools
import json
import logging
import os
import subprocess
import sys
import types

import psutil
import pytest
import torch

from mislas_hf import cpu_threads
from mislas_hf.cpu_threads import ThreadCountAdapter
from mislas_hf.scripts import launch as launch_module
from mislas_hf.training_args import MislasTrainingArguments, native_bf16_available

PROBE = """
import json, sys
import mislas_hf.training_args as training_args_module
if "--fake_bf16" in sys.argv:
    training_args_module.native_bf16_available = lambda use_cpu=False: True
if "--idle_cores" in sys.argv:
    import mislas_hf.cpu_threads
    mislas_hf.cpu_threads.CoreLoad.sample = lambda self: 0.0
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
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
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
    # one thread per physical core of the CPUs this process may use
    cores = len(os.sched_getaffinity(0)) * psutil.cpu_count(logical=False) // psutil.cpu_count(logical=True)
    accelerate = ["accelerate.commands.launch"]
    runs = {  # started together: four interpreter start-ups overlap
        "accelerate, no thread count": launch(tmp_path / "a", accelerate, "--fake_bf16", "--idle_cores"),
        "accelerate, user's OMP_NUM_THREADS": launch(tmp_path / "b", accelerate, omp_num_threads="1"),
        "accelerate --num_cpu_threads_per_process": launch(
            tmp_path / "c", [*accelerate, "--num_cpu_threads_per_process", "1"]
        ),
        "torchrun, 2 processes": launch(
            tmp_path / "d", ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"], "--fake_bf16",
            "--idle_cores",
        ),
    }
    found = {name: results(process) for name, process in runs.items()}

    # one process, no thread count given, no other load: all cores, not accelerate's 1; bf16 default kept (native here)
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


# ----------------------------------------------------------------------------------------------------------------
# The count from the free cores, on a machine made up for the test
# ----------------------------------------------------------------------------------------------------------------

CpuTimes = collections.namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")
ProcessTimes = collections.namedtuple("ProcessTimes", "user system children_user children_system iowait")


class FakeProcess:
    """A process of the made-up machine: its CPU seconds at the first reading and at every later one."""

    def __init__(self, pid, seconds, children=(), parent=None):
        self.pid, self._children, self._parent = pid, list(children), parent
        self.readings = itertools.chain(seconds, itertools.repeat(seconds[-1]))

    def cpu_times(self):
        return ProcessTimes(next(self.readings), 0.0, 0.0, 0.0, 0.0)

    def children(self, recursive=False):
        return list(self._children)

    def parent(self):
        return self._parent


def made_up_machine(monkeypatch, *, cpus, logical, physical, busy, seconds, own, sibling=None, io_wait=None):
    """`os.sched_getaffinity` gives `cpus` of `logical` CPUs on `physical` cores; between the first reading of
    `CoreLoad` and every later one (`seconds` apart on a fake clock), CPU k runs tasks for `busy[k]` seconds and waits
    on I/O for `io_wait[k]`; this process uses `own` CPU seconds and its sibling under the launcher `sibling` (None:
    no launcher)."""
    io_wait = io_wait or {}
    start = [CpuTimes(100.0, 0.0, 50.0, 1000.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0) for _ in range(logical)]
    end = [
        times._replace(
            user=times.user + busy.get(k, 0.0), iowait=times.iowait + io_wait.get(k, 0.0),
            idle=times.idle + seconds - busy.get(k, 0.0) - io_wait.get(k, 0.0),
        )
        for k, times in enumerate(start)
    ]
    readings = itertools.chain([start], itertools.repeat(end))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus))
    counts = {True: logical, False: physical}
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: counts[logical])
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: next(readings))
    me = FakeProcess(1, [10.0, 10.0 + own])
    if sibling is not None:
        me._parent = FakeProcess(0, [0.0], children=[me, FakeProcess(2, [20.0, 20.0 + sibling])])
    monkeypatch.setattr(psutil, "Process", lambda: me)
    clock = types.SimpleNamespace(now=0.0)

    def sleep(duration):
        clock.now += duration

    monkeypatch.setattr(cpu_threads, "time", types.SimpleNamespace(monotonic=lambda: clock.now, sleep=sleep))


@pytest.mark.parametrize("logical, physical", [(16, 16), (16, 8)])
def test_the_count_is_the_free_cores_of_the_cpu_set_shared_by_the_local_processes(monkeypatch, logical, physical):
    # 8 of 16 CPUs; a competitor fills CPU 0, our sibling process ran 0.4 s on CPU 1 (0.05 s of others there),
    # daemons 0.01 s on each other CPU of ours; CPU 3 waits on I/O (not busy); CPU 9 is busy but not ours
    busy = {0: 0.5, 1: 0.45, 2: 0.01, 3: 0.01, 4: 0.01, 5: 0.01, 6: 0.01, 7: 0.01, 9: 0.5}
    made_up_machine(monkeypatch, cpus=range(8), logical=logical, physical=physical, busy=busy, io_wait={3: 0.3},
                    seconds=0.5, own=0.0, sibling=0.4)
    others = (0.5 + 0.45 + 6 * 0.01 - 0.4) / 0.5  # 1.22 cores
    cores = 8 * physical // logical  # hyperthread siblings count once
    expected_threads = (cores - 1) // 2  # one core busy (1.22 rounds to 1), shared by 2 local processes

    choice = cpu_threads.free_core_threads(local_processes=2)

    assert choice.threads == expected_threads and choice.busy == 1 and choice.cores == cores
    assert choice.other_load == pytest.approx(others)
    assert str(choice) == (
        f"{cores} cores available, 1 busy (other processes use 1.22 cores), 2 local processes: "
        f"{expected_threads} threads per process"
    )


@pytest.fixture
def cpu_args(tmp_path):
    """CPU training arguments of a plain `python` run (no launcher variables); torch's thread count restored after."""
    args = MislasTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert args.device.type == "cpu"
    threads = torch.get_num_threads()
    yield args
    torch.set_num_threads(threads)


def test_plain_python_without_a_count_takes_the_free_cores_and_logs_why(monkeypatch, cpu_args, caplog):
    for name in (*launch_module.LAUNCHER_MARKERS, *launch_module.USER_THREAD_VARIABLES, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    # 4 CPUs, one of them busy all the time (0.02 s of it this process's own): 3 threads
    made_up_machine(monkeypatch, cpus=range(4), logical=4, physical=4, busy={2: 0.5}, seconds=0.5, own=0.02)
    with caplog.at_level(logging.INFO, logger="mislas_hf"):
        assert launch_module.use_cpu_cores(cpu_args) == 3
    assert torch.get_num_threads() == 3
    assert "4 cores available, 1 busy (other processes use 0.96 cores), 1 local processes: 3 threads per process: " \
           "training on 3 threads per process" in caplog.text
    adapter = launch_module.cpu_thread_adapter(cpu_args)
    assert isinstance(adapter, ThreadCountAdapter) and adapter.max_threads == 4


def test_the_users_thread_count_is_kept(monkeypatch, cpu_args, caplog):
    for name in launch_module.LAUNCHER_MARKERS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)  # what torch made of it at start-up
    made_up_machine(monkeypatch, cpus=range(8), logical=8, physical=8, busy={}, seconds=0.5, own=0.0)
    with caplog.at_level(logging.INFO, logger="mislas_hf"):
        assert launch_module.use_cpu_cores(cpu_args) == 3  # not the 8 idle cores
    assert torch.get_num_threads() == 3
    assert "training on 3 threads per process, the count you chose" in caplog.text
    assert launch_module.cpu_thread_adapter(cpu_args) is None


# ----------------------------------------------------------------------------------------------------------------
# Following the free cores during training, on a fake clock
# ----------------------------------------------------------------------------------------------------------------


class FakeTorchThreads:
    """Stands in for torch's thread count inside mislas_hf.cpu_threads and records each change."""

    def __init__(self, threads):
        self.threads, self.changes = threads, []

    def get_num_threads(self):
        return self.threads

    def set_num_threads(self, threads):
        self.threads = threads
        self.changes.append(threads)


class Run:
    """Drives a ThreadCountAdapter: steps of given seconds on a fake clock, the free-core hint set by the test.
    Windows: 5 steps and at least 0.5 s (so exactly 5 of the steps here); slowdown 1.5x; a try is kept when 5%
    faster; up-probes every 2 windows."""

    def __init__(self, monkeypatch, threads, max_threads):
        self.torch = FakeTorchThreads(threads)
        monkeypatch.setattr(cpu_threads, "torch", self.torch)
        self.now, self.free = 0.0, max_threads
        self.adapter = ThreadCountAdapter(
            max_threads, threads_left_free=lambda: self.free, clock=lambda: self.now, min_window_steps=5,
            window_seconds=0.5, slowdown=1.5, min_gain=0.05, probe_windows=2,
        )
        self.adapter.on_train_begin(None, None, None)

    def windows(self, count, step_seconds):
        """`count` windows of 5 steps of `step_seconds`; the thread count after each window."""
        after = []
        for _ in range(count):
            for _ in range(5):
                self.now += step_seconds
                self.adapter.on_step_end(None, None, None)
            after.append(self.torch.threads)
        return after


def test_a_competitor_that_comes_and_goes_is_followed(monkeypatch, caplog):
    run = Run(monkeypatch, threads=2, max_threads=2)
    with caplog.at_level(logging.INFO, logger="mislas_hf"):
        assert run.windows(3, 0.2) == [2, 2, 2]
        run.free = 1  # another process starts: steps 10x slower on 2 threads
        assert run.windows(1, 2.0) == [1]  # tried 1 thread
        assert run.windows(3, 0.35) == [1, 1, 1]  # 0.35 s < 2.0 s: kept; no probe while only 1 core is free
        run.free = 2  # it ended: after 2 windows, 2 threads are tried, faster, kept
        assert run.windows(1, 0.35) + run.windows(1, 0.2) + run.windows(2, 0.2) == [2, 2, 2, 2]
    assert run.torch.changes == [1, 2]
    assert caplog.text.count("Training steps became 10.0x slower (0.2 s -> 2 s per step)") == 1
    assert "set OMP_NUM_THREADS (e.g. OMP_NUM_THREADS=1)" in caplog.text


def test_a_slowdown_that_fewer_threads_do_not_cure_is_undone_once(monkeypatch):
    run = Run(monkeypatch, threads=4, max_threads=4)
    run.windows(2, 0.2)
    run.free = 2
    assert run.windows(1, 2.0) == [2]  # tried the 2 free cores' count
    assert run.windows(1, 2.5) == [4]  # slower still: back to 4, whose 2.0 s is the usual time now
    assert run.windows(4, 2.0) == [4, 4, 4, 4]  # no new try at the same slowness
    assert run.torch.changes == [2, 4]


def test_up_probes_that_do_not_pay_are_tried_ever_more_rarely(monkeypatch):
    run = Run(monkeypatch, threads=1, max_threads=2)
    run.free = 2  # the load says a core is free, but 2 threads are slower (e.g. a core shared with a hyperthread)
    history = []
    for _ in range(17):
        slower_on_two = 0.5 if run.torch.threads == 2 else 0.35
        history += run.windows(1, slower_on_two)
    # a probe after 2 windows, back after 1; the next after 4 windows, back; the next after 8
    assert history == [1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1]
    assert run.torch.changes == [2, 1, 2, 1, 2, 1]
