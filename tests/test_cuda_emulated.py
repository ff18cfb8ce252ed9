"""The CUDA C++ backend (csrc/cuda/lstm.cu) checked against the reference
backend, run on CPU tensors through the CPU emulation of the CUDA execution
model (bilstm_fast._cuda_emu, csrc/cuda/emu.h; BILSTM_FAST_CUDA_EMULATE=1),
plus the facts this GPU-less machine can check about the real build
(bilstm_fast._cuda): compiled for sm_80/sm_90/sm_90a, no spills, shared memory
within budget, and a clear "no CUDA device" status instead of a crash.

Legend: T steps, B batch, N directions, H hidden. Shapes stay tiny: every CUDA
thread is an OS thread here (blocks of 1-4 warps, H <= 60). The emulated
device has 8 SMs and 48 KB of shared memory per block, so a direction runs
on up to 4 blocks.
"""
from __future__ import annotations

import pytest
import torch

import cuda_resources  # tools/cuda_resources.py (conftest puts tools/ on sys.path)
from bilstm_fast.ops import backends, cuda_lstm, native, reference
from bilstm_fast.ops import lstm_recurrence
from conftest import make_inputs, maxerr, valid_mask

OUTPUTS = ("y", "h_n", "c_n", "gates", "cells", "dgx", "dh0", "dc0")
# Max abs error against the fp32 reference, by engine (fp32 input): exact FMAs
# round like any fp32 matmul; tf32 keeps 10 mantissa bits of both operands
# (relative ~5e-4 per product, docs/cuda.md §6).
FP32_TOL = {"fma": 2e-5, "tf32": 3e-3}


def test_emulation_module_is_built():
    """_cuda_emu is always built (host compiler only): its absence is a build
    bug, not a reason to skip every test below."""
    mod = native.load("_cuda_emu")
    assert not isinstance(mod, str), mod
    info = mod.info()
    assert info["emulated"] is True
    assert info["kernels"] == ("lstm_fwd_kernel", "lstm_bwd_kernel")
    assert info["step_functions"] == ("fwd_step", "bwd_step")


def test_engine_codes_mirror_the_module():
    assert native.load("_cuda_emu").engines == cuda_lstm.ENGINES


@pytest.fixture
def emulate(monkeypatch):
    monkeypatch.setenv(cuda_lstm.EMULATE_ENV, "1")
    yield


def run_both(x, lengths, plan=None):
    """Kernel (emulated, with `plan`: a cuda_lstm.Plan or None) and reference
    forward+backward on the same inputs."""
    out = {}
    for name, mod, pl in (("kernel", cuda_lstm, plan), ("ref", reference, None)):
        y, hn, cn, gates, cells = mod.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], lengths, True, pl)
        dgx, dh0, dc0, _ = mod.backward(x["dy"], x["dh_n"], x["dc_n"], x["w_hh"], None, x["h0"], x["c0"],
                                        lengths, y, gates, cells, pl)
        out[name] = dict(y=y, h_n=hn, c_n=cn, gates=gates, cells=cells, dgx=dgx, dh0=dh0, dc0=dc0)
    return out


def run_reference(x, lengths):
    """The reference alone (the fp32 baseline of the three-way bound)."""
    y, hn, cn, gates, cells = reference.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], lengths, True)
    dgx, dh0, dc0, _ = reference.backward(x["dy"], x["dh_n"], x["dc_n"], x["w_hh"], None, x["h0"], x["c0"],
                                          lengths, y, gates, cells)
    return dict(y=y, h_n=hn, c_n=cn, gates=gates, cells=cells, dgx=dgx, dh0=dh0, dc0=dc0)


def errors(out, T, B, lengths, ref=None):
    m = valid_mask(T, B, lengths)
    ref = ref or out["ref"]
    return {n: maxerr(out["kernel"][n], ref[n], m if n in ("gates", "cells") else None) for n in OUTPUTS}


def describe(N, B, H, dtype, plan):
    f, b = (cuda_lstm.plan_for(kind, N, B, H, dtype, "cpu", plan) for kind in (0, 1))
    return (f"forward {f['text']} (U={f['units']}, Kr={f['reg_cols']}/{f['kpad']}, KS={f['ksplit']})\n"
            f"  backward {b['text']} (U={b['units']}, Kr={b['reg_cols']}/{b['kpad']})"), f, b


# (T, B, N, H, lengths, plan). blocks > 1 runs the per-direction barrier and
# the exchange; reg_tiles 0 keeps all of W_hh in shared memory, -1 (auto) as
# much as fits in registers, small values split it; batch_tile < B runs
# several chunks (state through the spill buffer); warps=4 at H=60 gives the
# forward several row slots per warp and the backward a register/shared split.
CASES = {
    "fma_3blocks_registers": (5, 3, 2, 21, [5, 1, 3], dict(engine="fma", blocks=3)),
    "fma_3blocks_shared": (5, 3, 2, 21, [5, 1, 3], dict(engine="fma", blocks=3, reg_tiles=0)),
    "fma_split_chunks": (4, 11, 2, 16, [4, 3, 2, 1, 4, 3, 2, 1, 1, 4, 2], dict(engine="fma", blocks=2, reg_tiles=1)),
    "fma_1warp_odd_H19_N1": (3, 3, 1, 19, None, dict(engine="fma", blocks=3, warps=1)),
    "fma_one_block": (3, 3, 2, 9, [1, 3, 2], dict(engine="fma", blocks=1)),
    "fma_T1_B1": (1, 1, 2, 8, None, dict(engine="fma", blocks=1)),
    "fma_wide_H60": (3, 2, 2, 60, [3, 1], dict(engine="fma", blocks=3, warps=4, reg_tiles=4)),
    "tf32_split": (5, 3, 2, 21, [5, 1, 3], dict(engine="tf32", blocks=3, reg_tiles=1)),
    "tf32_chunks_N1": (3, 18, 1, 13, None, dict(engine="tf32", blocks=2, batch_tile=16, reg_tiles=0)),
    "tf32_wide_bwd_split": (3, 2, 2, 60, [3, 1], dict(engine="tf32", blocks=3, warps=4, reg_tiles=12)),
    "auto_H48_4blocks": (4, 4, 2, 48, [4, 2, 1, 3], dict()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_forward_backward_vs_reference(emulate, case):
    T, B, N, H, lengths, over = CASES[case]
    lengths = None if lengths is None else torch.tensor(lengths)
    x = make_inputs(T, B, N, H)
    plan = cuda_lstm.Plan(**over)
    text, plan_f, plan_b = describe(N, B, H, torch.float32, plan)
    print(f"\n{case}: {text}")
    out = run_both(x, lengths, plan)
    errs = errors(out, T, B, lengths)
    print("  max abs errors:", {n: f"{e:.2e}" for n, e in errs.items()})
    for key in ("engine", "blocks", "warps"):
        if key in over:
            assert plan_f[key] == plan_b[key] == over[key]
    tol = FP32_TOL[plan_f["engine"]]
    for n, e in errs.items():
        assert e <= tol, f"{case}: {n} max error {e}"
    # positions t >= L_b are exactly zero
    m = valid_mask(T, B, lengths)
    assert (out["kernel"]["y"] * ~m).abs().max().item() == 0.0
    assert (out["kernel"]["dgx"] * ~m).abs().max().item() == 0.0


LOW_CASES = {
    "f16_1warp_split": (6, 3, 2, 21, [6, 2, 4], dict(engine="f16", blocks=3, warps=1, reg_tiles=1)),
    "f16_ksplit": (6, 3, 2, 21, [6, 2, 4], dict(engine="f16", blocks=3)),
    "f16_chunks_shared": (4, 19, 2, 13, [4, 1, 3, 2, 4] * 3 + [1, 2, 3, 4], dict(engine="f16", blocks=2, reg_tiles=0)),
    "f16_chunks_split": (4, 10, 2, 16, None, dict(engine="f16", blocks=2, batch_tile=8, reg_tiles=1)),
    "f16_wide_H60": (3, 3, 2, 60, [3, 1, 2], dict(engine="f16", blocks=3, warps=4, reg_tiles=2)),
    "f16_bwd_split_H120": (2, 3, 2, 120, [2, 1, 2], dict(engine="f16", blocks=4, reg_tiles=8)),
    "auto_T1_B3_H17": (1, 3, 2, 17, None, dict()),
}


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("case", list(LOW_CASES))
def test_low_precision_three_way(emulate, dtype, atol, case):
    """err(kernel, ref_fp32) <= 2 * err(reference fed the same dtype, ref_fp32) + atol."""
    T, B, N, H, lengths, over = LOW_CASES[case]
    lengths = None if lengths is None else torch.tensor(lengths)
    x_low = make_inputs(T, B, N, H, dtype=dtype, seed=11)
    x_32 = {k: v.float() for k, v in x_low.items()}
    plan = cuda_lstm.Plan(**over)
    print(f"\n{case} {dtype}: {describe(N, B, H, dtype, plan)[0]}")
    low = run_both(x_low, lengths, plan)
    ref32 = run_reference(x_32, lengths)
    e_k = errors(low, T, B, lengths, ref=ref32)
    e_r = errors(dict(kernel=low["ref"]), T, B, lengths, ref=ref32)
    for n in OUTPUTS:
        print(f"  {n}: err(kernel)={e_k[n]:.2e} err(ref {dtype})={e_r[n]:.2e}")
        assert low["kernel"][n].dtype == (torch.float32 if n in ("gates", "cells") else dtype)
        assert e_k[n] <= 2 * e_r[n] + atol, f"{n}: {e_k[n]} > 2 * {e_r[n]} + {atol}"


def test_strided_sequence_tensors(emulate):
    """gx and dy may be strided views ([T, B, N, *] with a dense last dim)."""
    T, B, N, H = 4, 3, 2, 11
    x = make_inputs(T, 2 * B, N, H, seed=3)
    lengths = torch.tensor([2, 4, 1])
    xs = dict(x, gx=x["gx"][:, ::2], dy=x["dy"][:, 1::2])
    xs["h0"], xs["c0"] = x["h0"][:, :B].contiguous(), x["c0"][:, :B].contiguous()
    xs["dh_n"], xs["dc_n"] = x["dh_n"][:, :B].contiguous(), x["dc_n"][:, :B].contiguous()
    assert not xs["gx"].is_contiguous() and not xs["dy"].is_contiguous()
    out = run_both(xs, lengths, cuda_lstm.Plan(engine="fma", blocks=2))
    errs = {n: maxerr(out["kernel"][n], out["ref"][n]) for n in ("y", "h_n", "c_n", "dgx", "dh0", "dc0")}
    print("\nstrided max abs errors:", errs)
    assert max(errs.values()) <= 2e-5


def test_nonfinite_like_reference(emulate):
    """NaN / Inf propagate as in the reference (itself checked against nn.LSTM
    by tests/test_nonfinite.py): +-inf pre-activations saturate the gates,
    NaN stays in its batch row, no other row is touched."""
    T, B, N, H = 4, 3, 2, 13
    x = make_inputs(T, B, N, H, seed=5)
    x["gx"][1, 0, 0, 3] = float("inf")           # a saturated input gate
    x["gx"][2, 0, 1, H + 5] = float("-inf")      # a closed forget gate
    x["h0"][0, 2, 4] = float("nan")              # NaN in one sequence's state
    for plan in (cuda_lstm.Plan(engine="fma", blocks=2), cuda_lstm.Plan(engine="tf32", blocks=2)):
        out = run_both(x, None, plan)
        for n in ("y", "h_n", "c_n", "dgx", "dh0", "dc0"):
            k, r = out["kernel"][n], out["ref"][n]
            assert torch.equal(k.isnan(), r.isnan()), f"{plan.engine} {n}: NaN positions differ"
            assert torch.equal(k.isinf(), r.isinf()), f"{plan.engine} {n}: Inf positions differ"
            fin = r.isfinite()
            err = (k[fin] - r[fin]).abs().max().item()
            print(f"{plan.engine} {n}: {int((~fin).sum())} non-finite, finite max err {err:.1e}")
            assert err <= FP32_TOL[plan.engine]


@pytest.mark.parametrize("engine", ["fma", "tf32"])
def test_op_gradients_incl_dw_hh(emulate, engine):
    """Through bilstm_fast.ops.lstm_recurrence(..., backend="cuda:..."):
    outputs and the gradients of gx, w_hh (the op's dW_hh GEMM), h0, c0."""
    T, B, N, H = 5, 3, 2, 10
    x = make_inputs(T, B, N, H, seed=7)
    lengths = torch.tensor([3, 5, 1])
    res = {}
    for backend in ("cuda", "reference"):
        leaves = {k: x[k].detach().clone().requires_grad_() for k in ("gx", "w_hh", "h0", "c0")}
        name = f"cuda:engine={engine},blocks=2,reg_tiles=1" if backend == "cuda" else backend
        y, hn, cn = lstm_recurrence(leaves["gx"], leaves["w_hh"], leaves["h0"], leaves["c0"],
                                    lengths=lengths, backend=name)
        loss = (y * x["dy"]).sum() + (hn * x["dh_n"]).sum() + (cn * x["dc_n"]).sum()
        loss.backward()
        res[backend] = dict(y=y, h_n=hn, c_n=cn, **{"d" + k: v.grad for k, v in leaves.items()})
    errs = {n: maxerr(res["cuda"][n], res["reference"][n]) for n in res["cuda"]}
    print(f"\nop ({engine}) max abs errors:", {n: f"{e:.2e}" for n, e in errs.items()})
    for n, e in errs.items():
        assert e <= (5e-5 if engine == "fma" else 1e-2), f"{n} max error {e}"


# --------------------------------------------------------------- dispatch
@pytest.fixture
def tf32_switch():
    """Sets torch.backends.cuda.matmul.allow_tf32 (a property, not an attribute) and restores it."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32

    def set_(value: bool):
        matmul.allow_tf32 = value
    yield set_
    matmul.allow_tf32 = saved


def test_auto_engine_follows_dtype_batch_and_tf32(emulate, tf32_switch):
    pick = lambda B, dtype: cuda_lstm.plan_for(0, 2, B, 48, dtype, "cpu")["engine"]  # noqa: E731
    assert pick(1, torch.float16) == pick(64, torch.bfloat16) == "f16"
    tf32_switch(False)
    assert pick(16, torch.float32) == "fma"
    tf32_switch(True)
    assert pick(16, torch.float32) == "tf32"
    # 4 blocks per direction at most (8 SMs); units come in multiples of 8
    plan = cuda_lstm.plan_for(0, 2, 2, 48, torch.float32, "cpu")
    print("\nauto plan at H=48:", plan)
    assert plan["blocks"] == 3 and plan["units"] == 16
    plan = cuda_lstm.plan_for(0, 2, 2, 20, torch.float32, "cpu")
    assert plan["blocks"] == 3 and plan["units"] == 8 and plan["reg_cols"] == plan["kpad"]


def test_plan_text_round_trip(emulate):
    for B in (1, 9, 40):
        for dtype in (torch.float32, torch.float16):
            d = cuda_lstm.plan_for(1, 2, B, 37, dtype, "cpu")
            again = cuda_lstm.plan_for(1, 2, B, 37, dtype, "cpu", cuda_lstm.parse_plan(d["text"]))
            d.pop("why"), again.pop("why")        # says "forced" the second time
            assert again == d, (d, again)
    assert cuda_lstm.parse_plan("engine=fma,blocks=2").text() == \
        "engine=fma,blocks=2,warps=0,batch_tile=0,reg_tiles=-1"
    with pytest.raises(ValueError, match="engine must be one of"):
        cuda_lstm.parse_plan("engine=wgmma")


def spec(device="cpu", dtype=torch.float32, N=2, H=16, proj=False):
    return backends.CallSpec(device, dtype, N, H, H, proj, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_plan_the_dispatcher_can_choose_runs(emulate, dtype):
    """plans(spec) lists each distinct plan text; forced one by one (as the GPU
    check does), each runs forward + backward, with one chunk and several."""
    H = 21
    texts = cuda_lstm.plans(spec(dtype=dtype, H=H))
    print(f"\nplans(H={H}, {dtype}):", *texts, sep="\n  ")
    engines = {cuda_lstm.parse_plan(t).engine for t in texts}
    assert engines == ({"fma", "tf32"} if dtype == torch.float32 else {"f16"})
    assert len(texts) == len(set(texts)) >= 2
    for text in texts:
        plan = cuda_lstm.parse_plan(text)
        for B, lengths in ((3, [3, 1, 2]), (17, None)):
            T = 3
            x = make_inputs(T, B, 2, H, dtype=dtype, seed=B)
            L = None if lengths is None else torch.tensor(lengths)
            out = run_both(x, L, plan)
            if dtype == torch.float32:
                errs = errors(out, T, B, L)
                tol = FP32_TOL[plan.engine]
            else:
                ref32 = run_reference({k: v.float() for k, v in x.items()}, L)
                errs = errors(out, T, B, L, ref=ref32)
                e_r = errors(dict(kernel=out["ref"]), T, B, L, ref=ref32)
                tol = 2 * max(e_r.values()) + 1e-2
            print(f"  {text} B={B}: worst {max(errs.values()):.1e} (bound {tol:.1e})")
            assert max(errs.values()) <= tol, (text, B, errs)


def test_every_H_with_a_plan_for_B1_has_one_for_every_B():
    """unsupported_reason asks for B = 1 only: a larger B must never fail where
    B = 1 fits (at the edge of the chip, m16n16k16 falls back to m32n8k16)."""
    mod = native.load("_cuda_emu")
    gpu = (132, 227 * 1024)
    for dtype in (0, 2):
        for kind in (0, 1):
            for H in range(64, 2400, 56):
                try:
                    mod.plan(kind, 2, 1, H, dtype, *gpu, warps=mod.gpu_warps)
                except RuntimeError:
                    continue
                for B in (7, 9, 16, 17, 64, 1000):
                    mod.plan(kind, 2, B, H, dtype, *gpu, warps=mod.gpu_warps)


def test_too_large_H_is_a_clear_unsupported_reason(emulate):
    """W_hh that does not fit on the (emulated: 4 blocks x 48 KB) chip: the
    backend says so (auto then takes the next backend), and naming it is an error."""
    why = cuda_lstm.unsupported_reason(spec(H=256))
    print("\nH=256 emulated:", why)
    assert "does not fit on chip" in why
    with pytest.raises(ValueError, match="does not fit on chip"):
        backends.resolve_backend("cuda", "cpu", torch.float32, 2, 256, 256, False, False)


def test_forced_plans_that_cannot_run_are_errors(emulate):
    with pytest.raises(RuntimeError, match="does not run fp16"):
        cuda_lstm.plan_for(0, 2, 4, 16, torch.float16, "cpu", cuda_lstm.Plan(engine="fma"))
    with pytest.raises(RuntimeError, match="exceed the 8 SMs"):
        cuda_lstm.plan_for(0, 2, 4, 64, torch.float32, "cpu", cuda_lstm.Plan(blocks=5))
    with pytest.raises(RuntimeError, match="warps must be <= 8"):
        cuda_lstm.plan_for(0, 2, 4, 64, torch.float32, "cpu", cuda_lstm.Plan(warps=9))


# ----------------------------------------------------------- backend contract
def test_unsupported_reasons_emulated(emulate):
    assert cuda_lstm.unavailable_reason() is None
    assert cuda_lstm.unsupported_reason(spec()) is None
    for dt in (torch.float16, torch.bfloat16):
        assert cuda_lstm.unsupported_reason(spec(dtype=dt)) is None
    why = cuda_lstm.unsupported_reason(spec(device="cuda"))
    print("\ncuda tensors under emulation:", why)
    assert "CPU tensors only" in why
    assert "float64" in cuda_lstm.unsupported_reason(spec(dtype=torch.float64))
    assert "proj_size" in cuda_lstm.unsupported_reason(spec(proj=True))
    assert cuda_lstm.plans(spec(proj=True)) == []
    assert "cuda" in backends.available_backends()


def test_unsupported_reasons_native(monkeypatch):
    monkeypatch.delenv(cuda_lstm.EMULATE_ENV, raising=False)
    why = cuda_lstm.unsupported_reason(spec(device="cpu"))
    print("\ncpu tensors without emulation:", why)
    assert "needs CUDA tensors" in why and cuda_lstm.EMULATE_ENV in why
    assert "proj_size" in cuda_lstm.unsupported_reason(spec(device="cuda", proj=True))


# --------------------------------------------------------- the real build
needs_cuda_build = pytest.mark.skipif(isinstance(native.load("_cuda"), str),
                                      reason="bilstm_fast._cuda not built (no nvcc at build time)")
needs_nvcc = pytest.mark.skipif(cuda_resources.unavailable_reason() is not None,
                                reason=f"{cuda_resources.unavailable_reason()}")


@needs_cuda_build
def test_cuda_module_built_for_sm80_sm90_sm90a():
    info = native.load("_cuda").info()
    print("\n_cuda.info():", info)
    assert info["emulated"] is False
    assert info["archs"] == ["80", "90", "90a"]
    assert native.load("_cuda").engines == cuda_lstm.ENGINES


@needs_cuda_build
def test_no_gpu_status_and_errors(monkeypatch):
    """On a machine without a GPU/driver: the backend says why, and a call into
    the module raises a Python exception carrying the CUDA error (no crash)."""
    monkeypatch.delenv(cuda_lstm.EMULATE_ENV, raising=False)
    mod = native.load("_cuda")
    st = mod.device_status()
    if st["code"] == 0 and st["count"] > 0:
        pytest.skip("a CUDA device is present")
    why = backends.backend_status()["cuda"]
    print("\nbackend_status()['cuda']:", why)
    assert why.startswith("no CUDA device") and st["name"] in why
    assert "cuda" not in backends.available_backends()
    with pytest.raises(RuntimeError, match=st["name"]):
        mod.device_limits(0)
    # CPU tensors never reach a kernel of the real build: a clear error at the boundary
    x = make_inputs(1, 1, 2, 4)
    with pytest.raises(ValueError, match="gx: expected a CUDA tensor"):
        mod.forward(x["gx"], x["w_hh"], x["h0"], x["c0"], None, torch.empty(1, 1, 2, 4), torch.empty(2, 1, 4),
                    torch.empty(2, 1, 4), None, None, torch.empty(16), torch.empty(1),
                    torch.zeros(64, dtype=torch.int32), 0)


@needs_nvcc
def test_resources_no_spills_smem_in_budget():
    """nvcc -Xptxas -v figures of every kernel variant the dispatcher picks, per arch."""
    limit = {80: 163 * 1024, 90: 227 * 1024, "90a": 227 * 1024}
    rows = cuda_resources.rows([80, 90, "90a"], [64, 256, 1024], ["fp32", "fp16", "bf16"])
    for r in rows:
        print(r)
    assert {r["arch"] for r in rows} == {80, 90, "90a"}
    kernels = {(r["kernel"], r["note"].split()[0]) for r in rows}
    assert {k for k, _ in kernels} == {"lstm_fwd_kernel", "lstm_bwd_kernel"}
    assert {e for _, e in kernels} == {"f16", "tf32", "fma"}
    for r in rows:
        assert r["spills"] == 0 and r["stack"] == 0 and r["registers"] > 0, r
        assert r["smem_bytes"] <= limit[r["arch"]], r
        assert r["registers"] * r["threads"] <= 65536, r


# ------------------------------------------------------ drop-in, end to end
def test_bilstm_module_vs_nn_lstm(emulate):
    """BiLSTM(backend="cuda"), emulated, against torch.nn.LSTM with the same
    weights: 2 layers, packed unsorted lengths, outputs and every gradient."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    import bilstm_fast

    torch.manual_seed(5)
    D, H, T, B = 6, 12, 5, 3
    ref = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True)
    ours = bilstm_fast.BiLSTM(D, H, num_layers=2, backend="cuda:engine=fma,blocks=2")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, D)
    lengths = torch.tensor([3, 5, 1])
    outs = {}
    for name, m in (("cuda", ours), ("nn", ref)):
        xi = x.clone().requires_grad_()
        packed = pack_padded_sequence(xi, lengths, enforce_sorted=False)
        y, (hn, cn) = m(packed)
        y, _ = pad_packed_sequence(y, total_length=T)
        (y.square().sum() + hn.sum() + 2 * cn.sum()).backward()
        outs[name] = dict(y=y, h_n=hn, c_n=cn, dx=xi.grad,
                          **{"d" + k: p.grad for k, p in m.named_parameters()})
    errs = {k: maxerr(outs["cuda"][k], outs["nn"][k]) for k in outs["nn"]}
    print("\nBiLSTM vs nn.LSTM max abs errors:", {k: f"{e:.1e}" for k, e in errs.items()})
    assert cuda_lstm.plan_for(0, 2, B, H, torch.float32, "cpu", cuda_lstm.parse_plan("blocks=2"))["blocks"] == 2
    for k, e in errs.items():
        assert e <= 1e-5, f"{k}: {e}"
