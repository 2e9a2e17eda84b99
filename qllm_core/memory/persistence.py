"""Save a document memory to a directory and load it back, refusing anything that does not match.

Layout of a saved memory (no pickle anywhere)::

    memory.json               format, version, identities, config, prompt layout, file hashes
    prompt.safetensors        input_ids (n,), document_offsets (n_doc, 2) when known
    layer-000.safetensors     one layer's tensors (:meth:`LayerMemory.state`, or the KV cache's
    ...                       keys/values in mode full)

Loading checks, before any tensor is used: the format and version, the model's identity
(name, a hash of its config and of its weights' names, shapes and dtypes), the tokenizer's
identity (a hash of its full definition and chat template), the engine config (every field
that shapes the stored state), and each file's SHA-256 (a truncated or edited file fails).
Block keys and values stay in the file's memory mapping: the OS pages them in when a
question reads them, so a memory larger than RAM loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import QLLMConfig
from ..errors import MemoryFileError, MemoryMismatchError
from ..inputs.prompt import DocumentPrompt

if TYPE_CHECKING:
    from .document import DocumentMemory

FORMAT = "quickllama-document-memory"
VERSION = 1
MANIFEST = "memory.json"
RUNTIME_FIELDS = frozenset(
    {
        "mode",
        "offload_dir",
        "attention_backend",
        "max_cached_blocks",
        "max_input_tokens",
        "prefill_chunk_size",
        "max_batch_size",
    }
)
"""Config fields that do not shape a stored memory: the loading engine's own apply (the
memory keeps the mode it was read in, as :meth:`QLLMEngine.read`'s ``mode`` may override)."""


def save_memory(memory: DocumentMemory, path: str | os.PathLike[str]) -> None:
    """Write ``memory`` to the directory ``path`` (created; its memory files replaced)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    prompt = memory.prompt
    tensors = {"input_ids": torch.tensor(prompt.input_ids, dtype=torch.int64)}
    if prompt.document_offsets is not None:
        tensors["document_offsets"] = torch.tensor(prompt.document_offsets, dtype=torch.int64)
    files = {"prompt.safetensors": tensors}
    for index, layer_state in enumerate(memory.state.layer_states()):
        files[f"layer-{index:03d}.safetensors"] = layer_state
    hashes = {}
    for name, file_tensors in files.items():
        save_file(file_tensors, str(folder / name))
        hashes[name] = _file_sha256(folder / name)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "mode": memory.mode,
        "identity": memory.identity,
        "config": dataclasses.asdict(memory.config),
        "document_sha256": memory.document_sha256,
        "document_span": list(prompt.document_span),
        "tail": [list(prompt.tail[0]), list(prompt.tail[1])],
        "read_seconds": memory.read_seconds,
        "files": hashes,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


@dataclass(frozen=True)
class SavedMemory:
    """A saved document memory as read back: everything but the state itself.

    The engine restores the state from ``layer_states``
    (:func:`~qllm_core.memory.state.restore_state`).
    """

    prompt: DocumentPrompt
    config: QLLMConfig
    layer_states: list[dict[str, torch.Tensor]]
    document_sha256: str
    identity: dict[str, str]
    read_seconds: float


def read_memory(
    path: str | os.PathLike[str], identity: dict[str, str], config: QLLMConfig
) -> SavedMemory:
    """The memory saved in directory ``path``, checked against its reader.

    ``identity``: the reader's model and tokenizer
    (:func:`~qllm_core.models.identity.model_identity`); ``config``: its engine config.
    Raises :class:`MemoryFileError` for a missing, truncated or edited file or an unknown
    format or version, and :class:`MemoryMismatchError` when the memory was made with
    another model, tokenizer or config.
    """
    folder = Path(path)
    manifest = _read_manifest(folder)
    _check_identity(manifest["identity"], identity)
    config = _check_config(manifest, config)
    for name, digest in manifest["files"].items():
        if not (folder / name).is_file():
            raise MemoryFileError(f"{folder / name} is missing; save the memory again")
        if _file_sha256(folder / name) != digest:
            raise MemoryFileError(
                f"{folder / name} does not match the hash in {MANIFEST} (truncated or edited); "
                "save the memory again"
            )
    prompt_tensors = _load(folder / "prompt.safetensors")
    offsets = prompt_tensors.get("document_offsets")
    prompt = DocumentPrompt(
        input_ids=prompt_tensors["input_ids"].tolist(),
        document_span=(manifest["document_span"][0], manifest["document_span"][1]),
        document_offsets=[(int(a), int(b)) for a, b in offsets.tolist()]
        if offsets is not None
        else None,
        tail=(list(manifest["tail"][0]), list(manifest["tail"][1])),
    )
    layers = sorted(name for name in manifest["files"] if name.startswith("layer-"))
    return SavedMemory(
        prompt=prompt,
        config=config,
        layer_states=[_load(folder / name) for name in layers],
        document_sha256=manifest["document_sha256"],
        identity=manifest["identity"],
        read_seconds=float(manifest.get("read_seconds", 0.0)),
    )


def read_manifest(
    file: Path, *, format_name: str, version: int, missing_hint: str, again: str
) -> dict[str, Any]:
    """A versioned JSON manifest, or :class:`MemoryFileError` saying what to do.

    ``missing_hint``: how to make one, for a missing file; ``again``: how to write it anew,
    for an unreadable, foreign or other-version file.
    """
    if not file.is_file():
        raise MemoryFileError(f"{file} is missing: {missing_hint}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MemoryFileError(f"{file} is not valid JSON ({error}); {again}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise MemoryFileError(f"{file} is not a {format_name} manifest; {again}")
    if manifest.get("version") != version:
        raise MemoryFileError(
            f"{file} has format version {manifest.get('version')!r}; this quickllama reads "
            f"version {version}: {again}"
        )
    return manifest


def _read_manifest(folder: Path) -> dict[str, Any]:
    manifest = read_manifest(
        folder / MANIFEST,
        format_name=FORMAT,
        version=VERSION,
        missing_hint=f"{folder} holds no saved document memory; save one with memory.save(path)",
        again="read the document again and save its memory",
    )
    needed = ("identity", "config", "files", "document_span", "tail", "document_sha256", "mode")
    missing = [key for key in needed if key not in manifest]
    if missing:
        raise MemoryFileError(f"{folder / MANIFEST} lacks {missing}; save the memory again")
    return manifest


def _check_identity(saved: dict[str, str], mine: dict[str, str]) -> None:
    for key, what in (("model_sha256", "model"), ("tokenizer_sha256", "tokenizer")):
        if saved.get(key) != mine[key]:
            raise MemoryMismatchError(
                f"the memory was made with another {what} ({saved.get('model')!r}, "
                f"{key} {str(saved.get(key))[:12]}...; this engine: {mine['model']!r}, "
                f"{mine[key][:12]}...); read the document again with this engine"
            )


def _check_config(manifest: dict[str, Any], config: QLLMConfig) -> QLLMConfig:
    """The saved config with this engine's runtime fields; raises on a field that differs."""
    saved = manifest["config"]
    mine = dataclasses.asdict(config)
    differ = sorted(k for k in mine if k not in RUNTIME_FIELDS and saved.get(k) != mine[k])
    if differ:
        details = ", ".join(f"{k}: saved {saved.get(k)!r}, engine {mine[k]!r}" for k in differ)
        raise MemoryMismatchError(
            f"the memory was read with another engine config ({details}); load it into an "
            "engine with the same config, or read the document again"
        )
    return config.replace(mode=manifest["mode"])


def _load(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise MemoryFileError(f"{file} cannot be read ({error}); save the memory again") from error


def _file_sha256(file: Path) -> str:
    """SHA-256 of a file, read in 1 MiB pieces (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while piece := handle.read(2**20):
            digest.update(piece)
    return digest.hexdigest()
