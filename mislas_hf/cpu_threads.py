"""How many threads a CPU job computes with when nobody chose the count: one per core of this process's CPU set that
other processes leave free (`CoreLoad`, `choose_thread_count`), followed during training as other processes start and
stop (`ThreadCountAdapter`, a `TrainerCallback`).

Why free cores and not all cores: torch runs each parallel region of a kernel on all its threads and waits for the
last one. With a thread on a core that another process also uses, every region waits for a descheduled thread, and
the small kernels of a CIFAR ResNet-32 do little else: measured on 2 cores, stage 1 ran at 5.3 it/s alone, 0.5 it/s on
2 threads beside one busy process, and at full single-core speed on 1 thread beside it.
"""

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.5
"""How long `choose_thread_count` watches the CPUs at the start of a job: long enough for /proc/stat's 10 ms ticks to
resolve a busy core (±2%), short beside the imports before it."""


def available_cpus() -> list[int]:
    """The CPUs this process may run on (`os.sched_getaffinity`: a `taskset`, cgroup cpuset or container limit), or
    all of the machine's where the platform has no affinity."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def usable_cores(cpus: list[int]) -> int:
    """The cores among `cpus` to compute on: one per physical core, as torch's own default, so the two hyperthreads
    of a core count once (`len(cpus)` x physical / logical cores of the machine, at least 1)."""
    logical = psutil.cpu_count(logical=True) or len(cpus)
    physical = psutil.cpu_count(logical=False) or logical
    return max(1, len(cpus) * physical // logical)


def busy_core_count(other_load: float) -> int:
    """Cores counted as taken by other processes that use `other_load` cores in all: a core counts once they use at
    least half of one (background daemons use a few hundredths; a busy process a whole core)."""
    return int(other_load + 0.5)


def _busy_seconds(times) -> float:
    """Seconds a CPU spent running tasks, counted as `psutil.cpu_percent` counts them: all but idle and I/O wait
    (guest time is already inside user time)."""
    not_running = times.idle + sum(getattr(times, name, 0.0) for name in ("iowait", "guest", "guest_nice"))
    return sum(times) - not_running


class CoreLoad:
    """
    The cores that processes outside this job keep busy on this process's CPUs, measured between one `sample` and
    the next (no waiting: a sample covers the time since the previous one).

    Busy time is read per CPU from /proc/stat (`psutil.cpu_times(percpu=True)`) on the CPUs this process may run on
    (`available_cpus`), and this job's own CPU time is taken off: this process and its children (DataLoader workers)
    and, with several local processes, the launcher's other processes and theirs. Not the load average
    (`os.getloadavg`): it is a one-minute moving average, late to see a process that just started and still counting
    one that just ended; it counts the runnable tasks of the whole machine (in a container, of the host) rather than
    CPU time on the CPUs this job may use; and it counts this job's own threads.
    """

    def __init__(self, local_processes: int = 1):
        self.cpus = available_cpus()
        self.local_processes = local_processes
        self._previous = self._read()

    def _job_processes(self) -> list[psutil.Process]:
        me = psutil.Process()
        roots = [me]
        if self.local_processes > 1:
            try:  # accelerate launch / torchrun start the local processes as children of one launcher process
                roots = me.parent().children()
            except (psutil.Error, AttributeError):
                pass
        processes = []
        for root in roots:
            try:
                processes += [root, *root.children(recursive=True)]
            except psutil.Error:  # ended meanwhile
                pass
        return processes

    def _read(self) -> tuple[float, float, dict[int, float]]:
        """(time, busy seconds summed over `cpus`, {pid: CPU seconds} of this job's processes)."""
        per_cpu = psutil.cpu_times(percpu=True)
        cpus = [cpu for cpu in self.cpus if cpu < len(per_cpu)] or range(len(per_cpu))
        job = {}
        for process in self._job_processes():
            try:
                times = process.cpu_times()
                job[process.pid] = times.user + times.system
            except psutil.Error:
                pass
        return time.monotonic(), sum(_busy_seconds(per_cpu[cpu]) for cpu in cpus), job

    def sample(self) -> float:
        """Cores (CPU seconds per second) that other processes used on this process's CPUs since the previous sample
        (or since this object was made)."""
        (start, busy_start, job_start), (end, busy_end, job_end) = self._previous, self._read()
        self._previous = (end, busy_end, job_end)
        job_seconds = sum(seconds - job_start.get(pid, 0.0) for pid, seconds in job_end.items())
        return max(0.0, (busy_end - busy_start - job_seconds) / max(end - start, 1e-9))


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count per process and what it came from."""

    threads: int
    cores: int  # usable cores of this process's CPU set (`usable_cores`)
    busy: int  # of them, counted as taken by other processes (`busy_core_count`)
    other_load: float  # cores other processes used there
    local_processes: int

    def __str__(self) -> str:
        return (
            f"{self.cores} cores available, {self.busy} busy (other processes use {self.other_load:.2f} cores), "
            f"{self.local_processes} local processes: {self.threads} threads per process"
        )


def choose_thread_count(load: CoreLoad) -> ThreadChoice:
    """One thread per usable core (`usable_cores`) that other processes left free over the last `load.sample()`,
    shared equally between the local processes, at least 1. Other processes' load is counted in CPUs: on a machine
    with hyperthreads, a busy hyperthread takes a whole core from the count."""
    cores = usable_cores(load.cpus)
    other_load = load.sample()
    busy = min(cores, busy_core_count(other_load))
    threads = max(1, (cores - busy) // load.local_processes)
    return ThreadChoice(threads, cores, busy, other_load, load.local_processes)


def free_core_threads(local_processes: int, seconds: float = SAMPLE_SECONDS) -> ThreadChoice:
    """The thread count per process for the cores free now: `choose_thread_count` after watching the CPUs for
    `seconds`."""
    load = CoreLoad(local_processes)
    time.sleep(seconds)
    return choose_thread_count(load)


class ThreadCountAdapter(TrainerCallback):
    """
    Follows, between training steps, the cores other processes leave to this run (`torch.set_num_threads`).

    Step times are grouped in windows (at least `min_window_steps` steps and `window_seconds` seconds) and each window
    is judged by its median, so a checkpoint save or a logging step does not count as a slowdown. With hysteresis:

    * down: when a window is `slowdown` times slower than usual for the current count (another process started), try
      fewer threads: as many as the free cores allow (`threads_left_free`), at least one fewer;
    * up: when fewer threads than `max_threads` run and the cores other processes leave free allow more, try that
      many, at most once every `probe_windows` windows (twice as rarely after each try that did not pay);
    * a try is kept only if its first window is faster by `min_gain` than the window before it; otherwise the count
      goes back, and that window's time becomes the usual one for it (the slowdown was not the threads' doing).

    `threads_left_free`: the thread count per process that the cores free over the last window allow
    (`choose_thread_count` on a `CoreLoad`, see `for_this_job`). `clock`: seconds, for tests.
    """

    def __init__(
        self,
        max_threads: int,
        threads_left_free: Callable[[], int],
        clock: Callable[[], float] = time.perf_counter,
        min_window_steps: int = 5,
        window_seconds: float = 5.0,
        slowdown: float = 1.5,
        min_gain: float = 0.05,
        probe_windows: int = 6,
    ):
        self.max_threads = max_threads
        self.threads_left_free = threads_left_free
        self.clock = clock
        self.min_window_steps, self.window_seconds = min_window_steps, window_seconds
        self.slowdown, self.min_gain, self.probe_windows = slowdown, min_gain, probe_windows
        self.usual_step_seconds: dict[int, float] = {}  # thread count -> median step time of a normal window
        self.trial: tuple[int, float] | None = None  # (thread count before the try, its last window's median)
        self.probe_interval = probe_windows
        self.windows_since_change = 0
        self.warned = False
        self.threads = torch.get_num_threads()
        self.step_seconds: list[float] = []  # of the current window
        self.last_step_end = self.window_start = 0.0

    @classmethod
    def for_this_job(cls, local_processes: int) -> "ThreadCountAdapter":
        """An adapter for this process of a job with `local_processes` processes on this machine: up to one thread per
        usable core of its CPU set per local process, guided by the other processes' load on those CPUs."""
        load = CoreLoad(local_processes)
        return cls(
            max_threads=max(1, usable_cores(load.cpus) // local_processes),
            threads_left_free=lambda: choose_thread_count(load).threads,
        )

    def on_train_begin(self, args, state, control, **kwargs):
        self.threads = torch.get_num_threads()
        self.last_step_end = self.window_start = self.clock()
        self.step_seconds = []

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        self.step_seconds.append(now - self.last_step_end)
        self.last_step_end = now
        if len(self.step_seconds) >= self.min_window_steps and now - self.window_start >= self.window_seconds:
            median = statistics.median(self.step_seconds)
            self.step_seconds, self.window_start = [], now
            self._judge_window(median)

    def _judge_window(self, median: float) -> None:
        free = self.threads_left_free()  # also starts the next load measurement window
        if self.trial is not None:
            self._end_trial(median)
            return
        self.windows_since_change += 1
        usual = self.usual_step_seconds.setdefault(self.threads, median)
        if median > self.slowdown * usual and self.threads > 1:
            if not self.warned:
                logger.warning(
                    f"Training steps became {median / usual:.1f}x slower ({usual:.3g} s -> {median:.3g} s per step): "
                    "another process is probably using this run's cores. The thread count now follows the free "
                    "cores; set OMP_NUM_THREADS (e.g. OMP_NUM_THREADS=1) to fix it yourself."
                )
                self.warned = True
            self._start_trial(max(1, min(self.threads - 1, free)), median, "steps slowed down")
        elif self.threads < min(self.max_threads, free) and self.windows_since_change >= self.probe_interval:
            self._start_trial(min(self.max_threads, free), median, "cores became free")
        else:
            self.usual_step_seconds[self.threads] = min(usual, median)

    def _start_trial(self, threads: int, median: float, reason: str) -> None:
        self.trial = (self.threads, median)
        logger.info(
            f"{reason} ({median:.3g} s per step on {self.threads} threads): trying {threads} threads per process"
        )
        self._set_threads(threads)

    def _end_trial(self, median: float) -> None:
        previous, previous_median = self.trial
        went_up = self.threads > previous
        self.trial, self.windows_since_change = None, 0
        if median <= (1 - self.min_gain) * previous_median:
            self.usual_step_seconds[self.threads] = median
            self.probe_interval = self.probe_windows
            logger.info(
                f"keeping {self.threads} threads per process: {median:.3g} s per step ({previous_median:.3g} s on "
                f"{previous})"
            )
            return
        self.usual_step_seconds[previous] = previous_median
        if went_up:
            self.probe_interval *= 2
        logger.info(
            f"back to {previous} threads per process: {self.threads} gave {median:.3g} s per step, "
            f"not faster than {previous_median:.3g} s"
        )
        self._set_threads(previous)

    def _set_threads(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.threads = threads
