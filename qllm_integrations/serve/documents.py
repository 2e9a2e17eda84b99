"""Documents as resources: read once, kept under ``--memory-dir``, answered from by id.

A document's id is derived from what its memory depends on (:func:`document_id`), so the
same text posted to any replica, or again after a restart, has the same id, and a server
that finds the folder answers from it without reading again. Layout of one document::

    <memory dir>/<id>/memory/       the memory (DocumentMemory.save; safetensors, no pickle)
    <memory dir>/<id>/document.txt  the text (evidence char spans point into it)
    <memory dir>/<id>/record.json   tokens, sha256, mode, bytes, created, read_seconds
    <memory dir>/<id>/keys.json     SHA-256 of each API key that posted it (never a key)

A folder is written under a temporary name and renamed into place, so another process
sees a whole document or none. The ids come from the server, never a path from the client
(an id is checked against :data:`ID_PATTERN` before it names a folder). Loaded memories
are kept in a :class:`~qllm_core.memory.cache.MemoryCache` bounded in bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from qllm_core.config import MODES
from qllm_core.memory.cache import MemoryCache, default_cache_bytes
from qllm_core.memory.document import DocumentMemory, document_hash
from qllm_core.options import check_choice
from qllm_core.protocol import EngineProtocol
from qllm_integrations.serve.openai_schema import APIError, too_large

logger = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"doc-[0-9a-f]{32}")
"""What a document id looks like; anything else is not looked up."""


class ServableEngine(EngineProtocol, Protocol):
    """What the server needs of an engine beyond the providers' protocol: memories on disk."""

    @property
    def identity(self) -> dict[str, str]:
        """The model's and tokenizer's names and hashes (part of a document's id)."""
        ...

    def memory_for(self, document: str, *, mode: str | None = None) -> tuple[DocumentMemory, bool]:
        """The document's memory from the engine's cache, or read now: ``(memory, reused)``."""
        ...

    def load_memory(self, path: str | os.PathLike[str]) -> DocumentMemory:
        """A memory saved with ``DocumentMemory.save``."""
        ...


def document_id(engine: ServableEngine, mode: str | None, sha256: str) -> str:
    """``doc-`` + 32 hex digits of SHA-256 over identity, config, mode and text hash."""
    mode = mode or engine.config.mode
    basis = {
        "identity": engine.identity,
        "config": dataclasses.asdict(engine.config),
        "mode": mode,
        "sha256": sha256,
    }
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode())
    return "doc-" + digest.hexdigest()[:32]


def key_hash(key: str) -> str:
    """What is kept of an API key: its SHA-256 (hex)."""
    return hashlib.sha256(key.encode()).hexdigest()


class DocumentStore:
    """The documents of one engine under ``root``, with the memories loaded kept in RAM.

    ``owner`` arguments are an API key's :func:`key_hash`, or ``None`` on a server without
    keys (every document is then visible to every client). The methods block (they read
    documents and files): call them from a worker thread. Thread-safe.
    """

    def __init__(
        self, engine: ServableEngine, root: Path, *, max_document_tokens: int | None = None
    ) -> None:
        self.engine = engine
        self.root = root
        self.max_document_tokens = max_document_tokens
        self.memories = MemoryCache(default_cache_bytes())
        """Memories loaded or read by this process, by document id."""
        self._lock = threading.Lock()
        self._id_locks: dict[str, threading.Lock] = {}

    def post(self, text: str, mode: str | None, owner: str | None) -> dict[str, Any]:
        """Read ``text`` once (or find it read); its record, with ``reused``.

        Raises:
            APIError: 413 over ``--max-document-tokens``.
            QLLMError: an empty or non-text document, a bad mode, one over the engine's limit.
        """
        if mode is not None:
            check_choice("mode", mode, MODES)
        tokens = self.engine.count_tokens(text)
        limit = self.max_document_tokens
        if limit is not None and tokens > limit:
            raise too_large("the document's token count", tokens, limit, "--max-document-tokens")
        doc_id = document_id(self.engine, mode, document_hash(text))
        with self._id_lock(doc_id):
            folder = self.root / doc_id
            reused = folder.is_dir()
            if not reused:
                t0 = time.perf_counter()
                memory, _ = self.engine.memory_for(text, mode=mode)
                self._write(folder, text, memory, mode, time.perf_counter() - t0)
                self.memories.put(doc_id, memory)
            self._add_owner(folder, owner)
        return {**self._record(folder), "reused": reused}

    def record(self, doc_id: str, owner: str | None) -> dict[str, Any]:
        """The record of a document ``owner`` may see.

        Raises:
            APIError: 404 for an unknown id, or one only other keys posted.
        """
        return {**self._record(self._folder(doc_id, owner)), "reused": True}

    def open(self, doc_id: str, owner: str | None) -> tuple[str, DocumentMemory]:
        """The text and memory of a document ``owner`` may see (loaded from disk if need be).

        Raises:
            APIError: 404 as for :meth:`record`.
            MemoryFileError, MemoryMismatchError: the files are damaged, or were made by
                another model or config.
        """
        folder = self._folder(doc_id, owner)
        text = (folder / "document.txt").read_text(encoding="utf-8")
        with self._id_lock(doc_id):
            memory = self.memories.get(doc_id)
            if memory is None:
                memory = self.engine.load_memory(folder / "memory")
                self.memories.put(doc_id, memory)
        return text, memory

    def delete(self, doc_id: str, owner: str | None) -> dict[str, Any]:
        """Forget ``owner``'s hold on a document; its files go once no key holds it."""
        folder = self._folder(doc_id, owner)
        with self._id_lock(doc_id):
            owners = _read_owners(folder) - {owner} if owner is not None else set()
            if owners:
                _write_json(folder / "keys.json", sorted(owners))
            else:
                shutil.rmtree(folder, ignore_errors=True)
                self.memories.discard(doc_id)
        return {"id": doc_id, "object": "document", "deleted": True}

    def _folder(self, doc_id: str, owner: str | None) -> Path:
        """The folder of a document ``owner`` may see, else a 404."""
        folder = self.root / doc_id
        visible = ID_PATTERN.fullmatch(doc_id) and (folder / "record.json").is_file()
        if not visible or (owner is not None and owner not in _read_owners(folder)):
            raise APIError(
                404,
                f"no document {doc_id!r} here (or another API key posted it); post it to "
                "/v1/documents first",
                "document_not_found",
                param="document_id",
            )
        return folder

    def _write(
        self, folder: Path, text: str, memory: DocumentMemory, mode: str | None, seconds: float
    ) -> None:
        """Write the document's folder under a temporary name, then rename it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=self.root))
        try:
            memory.save(staging / "memory")
            (staging / "document.txt").write_text(text, encoding="utf-8")
            size = sum(f.stat().st_size for f in (staging / "memory").iterdir())
            record = {
                "id": folder.name,
                "object": "document",
                "tokens": memory.tokens,
                "sha256": memory.document_sha256,
                "mode": mode or self.engine.config.mode,
                "bytes": size,
                "created": int(time.time()),
                "read_seconds": round(seconds, 4),
            }
            _write_json(staging / "record.json", record)
            _write_json(staging / "keys.json", [])
            os.rename(staging, folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not folder.is_dir():  # not another process's rename winning the race
                raise

    def _add_owner(self, folder: Path, owner: str | None) -> None:
        if owner is not None:
            owners = _read_owners(folder)
            if owner not in owners:
                _write_json(folder / "keys.json", sorted(owners | {owner}))

    def _record(self, folder: Path) -> dict[str, Any]:
        record: dict[str, Any] = json.loads((folder / "record.json").read_text("utf-8"))
        return record

    def _id_lock(self, doc_id: str) -> threading.Lock:
        with self._lock:
            return self._id_locks.setdefault(doc_id, threading.Lock())


def _read_owners(folder: Path) -> set[str]:
    try:
        return set(json.loads((folder / "keys.json").read_text("utf-8")))
    except FileNotFoundError:
        return set()


def _write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` through a temporary file (readers see old or new)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value), encoding="utf-8")
    os.replace(temporary, path)
