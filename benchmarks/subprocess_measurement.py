"""One measurement per fresh Python process, for the benchmark scripts of this folder.

Each benchmark script runs its own `measure(spec)` when started as `python SCRIPT --measure JSON` and prints the
figures as a JSON object on its last stdout line; `measure_in_subprocess` starts it that way, so that no measurement
inherits the threads, caches or allocator state of another. benchmarks/ is not a package: scripts run from it have
it on `sys.path`, and pytest.ini puts it there for the tests.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def measure_in_subprocess(script: str | Path, spec: dict, what: str) -> dict:
    """`measure(spec)` of benchmark `script` in a fresh Python process (working directory: the repository root);
    its figures come back as the last stdout line. A failed run raises naming `what` and ending with its stderr."""
    completed = subprocess.run(
        [sys.executable, str(script), "--measure", json.dumps(spec)], capture_output=True, text=True, cwd=REPO_ROOT
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
