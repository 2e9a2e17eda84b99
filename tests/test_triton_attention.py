"""The Triton path meets the torch path's contract: one softmax over the union of keys.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import pytest
import torch
from test_attention import CASES, _check
from test_engine_oracles import _NoTokenizer
from tiny_models import TINY_ENGINE_CONFIG, make_tiny_model

from qllm_core import QLLMConfig, QLLMEngine
from qllm_core.errors import ConfigError
from qllm_core.kernels.backends import select_attention
from qllm_core.memory.request import RequestPlan

pytest.importorskip("triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Triton's interpreter multiplies bfloat16 operands of tl.dot as raw bits (triton-lang/triton
# issue 11584, "not supported yet"), so bfloat16 is checked on GPUs only (`make gpu-check`);
# float16 goes through the same low-precision code in the kernels.
GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type != "cuda", reason="bfloat16 in Triton needs a CUDA device"),
]
BFLOAT16 = pytest.param(torch.bfloat16, marks=GPU, id="bfloat16")
DTYPES = [torch.float32, torch.float16, BFLOAT16]


@pytest.fixture
def triton_attention():
    """The Triton path's two-stage attention (interpreted on the CPU: see conftest.py)."""
    return select_attention("triton", DEVICE)


def _on_device(attend):
    """``attend`` over CPU inputs moved to DEVICE, with the results moved back."""

    def run(q_local, local, q_global, segments, scaling):
        move = lambda x: x.to(DEVICE)  # noqa: E731
        local = type(local)(move(local.keys), move(local.values), local.window)
        segments = [type(s)(move(s.keys), move(s.values), s.causal_offset) for s in segments]
        out, probs = attend(move(q_local), local, move(q_global), segments, scaling)
        return out.cpu(), probs.cpu()

    return run


@CASES
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_merge_equals_union_softmax(
    triton_attention, n, m_local, window, m_blocks, m_rem, rem_offset, dtype
):
    seed = n * 1000 + m_local
    attend = _on_device(triton_attention)
    _check(
        n,
        m_local,
        window,
        m_blocks,
        m_rem,
        rem_offset,
        dtype,
        seed=seed,
        attend=attend,
        rounded_probs=True,
    )


@pytest.mark.parametrize(
    "dim, dtype",
    [
        (80, torch.float16),
        (256, torch.float32),
        pytest.param(80, torch.bfloat16, marks=GPU, id="80-bfloat16"),
        pytest.param(256, torch.bfloat16, marks=GPU, id="256-bfloat16"),
    ],
)
def test_triton_head_dims_off_the_tile(triton_attention, dim, dtype):
    """A head dim that is not a power of two (masked lanes), and one past 128 (float32 tiles
    of half size)."""
    attend = _on_device(triton_attention)
    _check(27, 61, 20, 48, 13, -5, dtype, seed=dim, attend=attend, dim=dim)


# Compiles both kernels for real GPU targets with Triton's own compiler and ptxas (no GPU
# needed) at the tiles the engine launches with, and reports their shared memory.
_COMPILE = """
import json, sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qllm_core.kernels import triton_attention as ta

arch, dtype_name, dim = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
dtype = getattr(torch, dtype_name)
ptr = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32"}[dtype_name]
t = ta.tiles(dtype, dim, rows=1024)
types = dict(q_ptr=ptr, k_ptr=ptr, v_ptr=ptr, lo_ptr="*i32", hi_ptr="*i32", out_ptr="*fp32",
             lse_ptr="*fp32", probs_ptr="*fp32", scale_log2="fp32")
shared = {}
for kernel, extra in ((ta._attend_kernel, {"RESUME": True}), (ta._key_probs_kernel, {})):
    names = kernel.arg_names
    consts = dict(HEAD_DIM=dim, BLOCK_D=t.block_d, BLOCK_M=t.block_m, BLOCK_N=t.block_n, **extra)
    signature = {a: "constexpr" if a in consts else types.get(a, "i32") for a in names}
    src = ASTSource(kernel, signature, {(names.index(a),): v for a, v in consts.items()})
    options = {"num_warps": 4, "num_stages": t.num_stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    shared[kernel.__name__] = compiled.metadata.shared
print(json.dumps(shared))
"""


@pytest.mark.parametrize(
    "arch, dtype, dim",
    [
        (86, "bfloat16", 256),  # the largest tiles of each dtype on the tightest GPUs
        (86, "float32", 128),
        (86, "float32", 256),
        (90, "bfloat16", 128),  # Hopper lowers the dots differently
    ],
)
def test_kernels_compile_for_gpus_within_shared_memory(arch, dtype, dim):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE, str(arch), dtype, str(dim)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shared = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(shared) == {"_attend_kernel", "_key_probs_kernel"}
    assert max(shared.values()) <= 99 * 1024, shared  # sm_86/sm_89: 99 KiB per block


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_triton_engine_equals_torch_engine(triton_attention, arch):
    """Whole engine, blocks retrieved and evicted: both paths give the same logits."""
    model = make_tiny_model(arch).to(DEVICE)
    ids = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    plan = RequestPlan(question_span=(5, 12), record_from=0)
    logits, counts = {}, {}
    for backend in ("torch", "triton"):
        config = TINY_ENGINE_CONFIG.replace(attention_backend=backend)
        engine = QLLMEngine(model, _NoTokenizer(), config=config)
        forward = engine.new_forward(plan=plan)
        with torch.no_grad():
            logits[backend] = torch.stack([forward(ids[:160]), forward(ids[160:161])]).cpu()
        counts[backend] = forward.memory.counts
    assert counts["torch"], "the input must be long enough for blocks to be retrieved"
    torch.testing.assert_close(logits["triton"], logits["torch"], atol=1e-4, rtol=1e-4)
    assert counts["triton"] == counts["torch"]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda", reason="bfloat16 in Triton needs a CUDA device")
def test_triton_engine_in_bfloat16_within_twice_the_torch_paths_rounding(triton_attention, arch):
    """Whole engine in bfloat16 on the GPU: against the torch path in float32 (the
    reference), the Triton path errs at most twice as much as the torch path in bfloat16."""
    ids = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    plan = RequestPlan(question_span=(5, 12), record_from=0)
    logits = {}
    for backend, dtype in (
        ("torch", torch.float32),
        ("torch", torch.bfloat16),
        ("triton", torch.bfloat16),
    ):
        model = make_tiny_model(arch).to(DEVICE, dtype)
        config = TINY_ENGINE_CONFIG.replace(attention_backend=backend)
        engine = QLLMEngine(model, _NoTokenizer(), config=config)
        forward = engine.new_forward(plan=plan)
        with torch.no_grad():
            step = torch.stack([forward(ids[:160]), forward(ids[160:161])])
        logits[backend, dtype] = step.double().cpu()
    reference = logits["torch", torch.float32]
    torch_error = (logits["torch", torch.bfloat16] - reference).abs().max().item()
    triton_error = (logits["triton", torch.bfloat16] - reference).abs().max().item()
    assert triton_error <= max(2 * torch_error, 1e-3), (triton_error, torch_error)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")
def test_auto_takes_the_triton_path_on_cuda():
    from qllm_core.kernels import triton_attention as kernels

    assert select_attention("auto", DEVICE) is kernels.two_stage_attention


def test_auto_takes_the_torch_path_on_the_cpu():
    from qllm_core.kernels import attention

    assert select_attention("auto", torch.device("cpu")) is attention.two_stage_attention


def test_triton_on_the_cpu_without_the_interpreter_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="CUDA devices.*attention_backend='torch'"):
        QLLMEngine(make_tiny_model(), _NoTokenizer(), config=QLLMConfig(attention_backend="triton"))


def test_triton_not_installed_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'quickllama\[triton\]'"):
        select_attention("triton", torch.device("cuda"))
