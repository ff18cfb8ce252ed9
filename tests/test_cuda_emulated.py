"""The CUDA C++ backend (csrc/cuda/lstm.cu) checked against the reference
backend, run on CPU tensors through the CPU emulation of the CUDA execution
model (bilstm_fast._cuda_emu, csrc/cuda/emu.h; BILSTM_FAST_CUDA_EMULATE=1),
plus the facts this GPU-less machine can check about the real build
(bilstm_fast._cuda): compiled for sm_80/sm_90/sm_90a, no spills, shared memory
within budget, and a clear "no CUDA device" status instead of a crash.

Legend: T steps, B batch, N directions, H hidden. Shapes stay tiny: every CUDA
thread is an OS thread here (blocks of 16-32 threads, H <= 48).
"""
from __future__ import annotations

import pytest
import torch

import cuda_resources  # tools/cuda_resources.py (conftest puts tools/ on sys.path)
from bilstm_fast.ops import backends, cuda_lstm, native, reference
from bilstm_fast.ops import lstm_recurrence
from conftest import make_inputs, maxerr, valid_mask



def test_emulation_module_is_built():
    """_cuda_emu is always built (host compiler only): its absence is a build
    bug, not a reason to skip every test below."""
    mod = native.load("_cuda_emu")
    assert not isinstance(mod, str), mod
    assert mod.info()["emulated"] is True


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


# (T, B, N, H, lengths, plan overrides). Every case with blocks > 1 runs the
# per-direction grid barrier; batch_tile < B runs several shared-memory tiles;
# threads < B * slice makes every thread loop over several (b, unit) pairs;
# threads >= 2 * B * slice splits each dot product over several threads (k-split).
CASES = {
    "onchip_3blocks_unsorted_len1": (5, 3, 2, 13, [5, 1, 3], dict(path="onchip", blocks=3, threads=16, batch_tile=2)),
    "stream_3blocks_unsorted_len1": (5, 3, 2, 13, [5, 1, 3], dict(path="stream", blocks=3, threads=16, batch_tile=2)),
    "auto_H48_4blocks": (4, 4, 2, 48, [4, 2, 1, 3], dict()),
    "stream_odd_H33_B5": (3, 5, 2, 33, [2, 3, 1, 3, 3], dict(path="stream", blocks=4, threads=32, batch_tile=2)),
    "stream_unstaged_L2": (4, 3, 2, 13, [4, 1, 3], dict(path="stream", blocks=3, threads=16, batch_tile=-1)),
    "onchip_unstaged_L2": (4, 3, 2, 13, [2, 4, 3], dict(path="onchip", blocks=2, threads=16, batch_tile=-1)),
    "onchip_ksplit_B2": (4, 2, 2, 24, [4, 2], dict(path="onchip", blocks=3, threads=64, batch_tile=1)),
    "stream_ksplit_B3": (4, 3, 2, 21, [1, 4, 3], dict(path="stream", blocks=3, threads=64, batch_tile=2)),
    "unstaged_ksplit": (3, 2, 1, 19, [3, 2], dict(path="stream", blocks=2, threads=64, batch_tile=-1)),
    "N1_H17_nolengths": (4, 2, 1, 17, None, dict(blocks=2, threads=16)),
    "T1_B1": (1, 1, 2, 8, None, dict(blocks=2, threads=8)),
    "one_block_per_dir": (3, 3, 2, 9, [1, 3, 2], dict(blocks=1, threads=32)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_forward_backward_vs_reference(emulate, case):
    T, B, N, H, lengths, over = CASES[case]
    lengths = None if lengths is None else torch.tensor(lengths)
    x = make_inputs(T, B, N, H)
    plan = cuda_lstm.Plan(**over)
    out = run_both(x, lengths, plan)
    plan_f, plan_b = (cuda_lstm.plan_for(kind, N, B, H, torch.float32, "cpu", plan) for kind in (0, 1))
    print(f"\n{case}: forward plan {plan_f}\n  backward plan {plan_b}")
    if "path" in over:
        assert plan_f["path"] == plan_b["path"] == over["path"]
    if "blocks" in over:
        assert plan_f["blocks"] == plan_b["blocks"] == min(over["blocks"], H)
    k, r = out["kernel"], out["ref"]
    m = valid_mask(T, B, lengths)
    errs = {n: maxerr(k[n], r[n], m if n in ("gates", "cells") else None)
            for n in ("y", "h_n", "c_n", "gates", "cells", "dgx", "dh0", "dc0")}
    print("  max abs errors:", {n: f"{e:.2e}" for n, e in errs.items()})
    for n, e in errs.items():
        assert e <= 2e-5, f"{case}: {n} max error {e}"
    # positions t >= L_b are exactly zero
    assert (k["y"] * ~m).abs().max().item() == 0.0
    assert (k["dgx"] * ~m).abs().max().item() == 0.0


def test_auto_plan_uses_several_blocks(emulate):
    """The automatic plan of the emulated device (8 SMs, 48 KB) at H=48 splits
    each direction over 4 blocks and keeps W_hh on chip."""
    plan = cuda_lstm.plan_for(0, 2, 2, 48, torch.float32, "cpu")
    print("\nauto plan:", plan)
    assert plan["path"] == "onchip" and plan["blocks"] == 4 and plan["slice"] == 12


def test_strided_sequence_tensors(emulate):
    """gx and dy may be strided views ([T, B, N, *] with a dense last dim)."""
    T, B, N, H = 4, 3, 2, 11
    x = make_inputs(T, 2 * B, N, H, seed=3)
    lengths = torch.tensor([2, 4, 1])
    xs = dict(x, gx=x["gx"][:, ::2], dy=x["dy"][:, 1::2])
    xs["h0"], xs["c0"] = x["h0"][:, :B].contiguous(), x["c0"][:, :B].contiguous()
    xs["dh_n"], xs["dc_n"] = x["dh_n"][:, :B].contiguous(), x["dc_n"][:, :B].contiguous()
    assert not xs["gx"].is_contiguous() and not xs["dy"].is_contiguous()
    out = run_both(xs, lengths, cuda_lstm.Plan(blocks=2, threads=16))
    errs = {n: maxerr(out["kernel"][n], out["ref"][n]) for n in ("y", "h_n", "c_n", "dgx", "dh0", "dc0")}
    print("\nstrided max abs errors:", errs)
    assert max(errs.values()) <= 2e-5


@pytest.mark.parametrize("path", ["onchip", "stream"])
def test_op_gradients_incl_dw_hh(emulate, path):
    """Through bilstm_fast.ops.lstm_recurrence(..., backend="cuda"): outputs and
    the gradients of gx, w_hh (dW_hh GEMM of the op), h0, c0."""
    T, B, N, H = 5, 3, 2, 10
    x = make_inputs(T, B, N, H, seed=7)
    lengths = torch.tensor([3, 5, 1])
    res = {}
    for backend in ("cuda", "reference"):
        leaves = {k: x[k].detach().clone().requires_grad_() for k in ("gx", "w_hh", "h0", "c0")}
        name = f"cuda:path={path},blocks=3,threads=16,batch_tile=2" if backend == "cuda" else backend
        y, hn, cn = lstm_recurrence(leaves["gx"], leaves["w_hh"], leaves["h0"], leaves["c0"],
                                    lengths=lengths, backend=name)
        loss = (y * x["dy"]).sum() + (hn * x["dh_n"]).sum() + (cn * x["dc_n"]).sum()
        loss.backward()
        res[backend] = dict(y=y, h_n=hn, c_n=cn, **{"d" + k: v.grad for k, v in leaves.items()})
    errs = {n: maxerr(res["cuda"][n], res["reference"][n]) for n in res["cuda"]}
    print(f"\nop ({path}) max abs errors:", {n: f"{e:.2e}" for n, e in errs.items()})
    for n, e in errs.items():
        assert e <= 5e-5, f"{n} max error {e}"


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("path", ["onchip", "stream"])
def test_low_precision_three_way(emulate, dtype, atol, path):
    """err(kernel, ref_fp32) <= 2 * err(reference fed the same dtype, ref_fp32) + atol."""
    T, B, N, H = 6, 3, 2, 16
    x_low = make_inputs(T, B, N, H, dtype=dtype, seed=11)
    x_32 = {k: v.float() for k, v in x_low.items()}
    lengths = torch.tensor([6, 2, 4])
    low = run_both(x_low, lengths, cuda_lstm.Plan(path=path, blocks=2, threads=32, batch_tile=2))
    ref32 = run_both(x_32, lengths)["ref"]
    m = valid_mask(T, B, lengths)
    for n in ("y", "h_n", "c_n", "gates", "cells", "dgx", "dh0", "dc0"):
        mask = m if n in ("gates", "cells") else None
        e_k = maxerr(low["kernel"][n], ref32[n], mask)
        e_r = maxerr(low["ref"][n], ref32[n], mask)
        print(f"{dtype} {path} {n}: err(kernel)={e_k:.2e} err(ref {dtype})={e_r:.2e}")
        assert low["kernel"][n].dtype == (torch.float32 if n in ("gates", "cells") else dtype)
        assert e_k <= 2 * e_r + atol, f"{n}: {e_k} > 2 * {e_r} + {atol}"


def test_huge_H_plans_stream_from_L2():
    """Every H has a plan: past the shared-memory tile, h / dG come from L2."""
    mod = native.load("_cuda_emu")
    for kind in (0, 1):
        plan = mod.plan(kind, 2, 64, 20000, 0, 108, 163 * 1024)
        print(plan)
        assert plan["path"] == "stream" and plan["smem_bytes"] <= 163 * 1024
    assert mod.plan(1, 2, 64, 20000, 0, 108, 163 * 1024)["batch_tile"] == 0


def test_forced_onchip_too_big_is_an_error(emulate):
    """Forcing the on-chip path where W_hh does not fit is a clear error."""
    mod = native.load("_cuda_emu")
    with pytest.raises(RuntimeError, match="exceeds shared memory"):
        mod.plan(0, 2, 4, 256, 0, 8, 48 * 1024, path=1, blocks=1)


# ----------------------------------------------------------- backend contract
def spec(device="cpu", dtype=torch.float32, N=2, H=16, proj=False):
    return backends.CallSpec(device, dtype, N, H, H, proj, True)


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
        mod.forward(x["gx"], x["w_hh"], x["w_hh"].transpose(1, 2).contiguous(), x["h0"], x["c0"], None,
                    torch.empty(1, 1, 2, 4), torch.empty(2, 1, 4), torch.empty(2, 1, 4), None, None,
                    torch.empty(24), torch.zeros(2, dtype=torch.int32), 0)


@needs_nvcc
def test_resources_no_spills_smem_in_budget():
    """nvcc -Xptxas -v figures of every kernel the dispatcher picks, per arch."""
    limit = {80: 163 * 1024, 90: 227 * 1024, "90a": 227 * 1024}
    rows = cuda_resources.rows([80, 90, "90a"], [64, 256, 1024, 4096], ["fp32", "fp16", "bf16"])
    for r in rows:
        print(r)
    assert {r["arch"] for r in rows} == {80, 90, "90a"}
    assert len(rows) == 3 * 4 * 3 * 2
    for r in rows:
        assert r["spills"] == 0 and r["registers"] > 0, r
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
    ours = bilstm_fast.BiLSTM(D, H, num_layers=2, backend="cuda:blocks=2,threads=16")
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
