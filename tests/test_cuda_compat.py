"""The device / driver / toolkit rules of bilstm_fast/ops/cuda_compat.py, with
injected facts (no GPU here): which devices each GPU backend can run on, the
driver-vs-runtime message, the nvcc choice of the build, and that
backend="auto" passes a device the cuda (or triton) backend cannot run on to
the next backend instead of failing at the launch."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bilstm_fast.ops import backends, cuda_compat, cuda_lstm, native
from bilstm_fast.ops.cuda_compat import DeviceFacts, DriverFacts

ARCHS = ["80", "90", "90a"]


def dev(cc, cooperative=True, name="GPU", index=0):
    return DeviceFacts(index, name, cc, 132, 227 * 1024, cooperative)


@pytest.mark.parametrize("cc,ok,note", [
    ((8, 0), True, "SASS sm_80"), ((8, 6), True, "SASS sm_80"), ((8, 9), True, "SASS sm_80"),
    ((9, 0), True, "SASS sm_90a"), ((10, 0), True, "PTX compute_90"), ((12, 0), True, "PTX compute_90"),
    ((7, 0), False, None), ((7, 5), False, None), ((6, 1), False, None)])
def test_cuda_arch_rule(cc, ok, note):
    why = cuda_compat.cuda_arch_reason(dev(cc, name="Tesla T4"), ARCHS)
    print(cc, why, cuda_compat.cuda_arch_note(dev(cc), ARCHS))
    assert (why is None) == ok
    if ok:
        assert cuda_compat.cuda_arch_note(dev(cc), ARCHS).startswith(note)
    else:
        assert f"sm_{cc[0]}{cc[1]}" in why and "Tesla T4" in why and "sm_80, sm_90, sm_90a" in why


def test_cuda_arch_rule_build_specific():
    """sm_90a SASS runs on 9.0 only; a build without sm_90 cannot serve 8.x."""
    assert cuda_compat.cuda_arch_reason(dev((9, 0)), ["90a"]) is None
    assert "no kernel image" in cuda_compat.cuda_arch_reason(dev((8, 6)), ["90", "90a"])
    assert cuda_compat.cuda_arch_reason(dev((8, 6)), ["86"]) is None


def test_no_cooperative_launch_is_a_reason():
    why = cuda_compat.cuda_arch_reason(dev((9, 0), cooperative=False), ARCHS)
    print(why)
    assert "cooperative launch" in why


def test_triton_arch_rule():
    assert cuda_compat.triton_arch_reason(dev((8, 0))) is None
    assert cuda_compat.triton_arch_reason(dev((9, 0), cooperative=False)) is None
    assert "older than sm_80" in cuda_compat.triton_arch_reason(dev((7, 5)))


def test_driver_rule_and_message():
    """A CUDA 13.0 runtime (static cudart) on a driver for CUDA 12.2 (r535):
    the message names both versions, the driver needed and the remedy."""
    old = DriverFacts(True, 12020, "535.104.05")
    why = cuda_compat.driver_reason(old, 13000, torch_cuda=12010)
    print(why)
    for text in ("535.104.05", "CUDA 12.2", "CUDA 13.0 runtime", "580.65.06", "torch here uses CUDA 12.1",
                 "CUDACXX=", "cuda-12.x"):
        assert text in why, text
    assert not why.startswith("no CUDA device")
    # minor-version compatibility: any 12.x runtime on any 12.x driver; older majors on newer drivers
    assert cuda_compat.driver_reason(old, 12080, 12010) is None
    assert cuda_compat.driver_reason(DriverFacts(True, 13000, "580.1"), 12040) is None
    assert cuda_compat.driver_reason(DriverFacts(False, why_absent="x"), 13000) is None
    # torch itself cannot run on that driver either: the remedy is another nvcc or a newer driver
    assert "update the driver" in cuda_compat.driver_reason(DriverFacts(True, 11080, "520"), 13000, 12040)


def test_no_device_reasons():
    """What `_cuda.device_status()` failures turn into."""
    insufficient = {"code": 35, "name": "cudaErrorInsufficientDriver",
                    "message": "CUDA driver version is insufficient for CUDA runtime version", "count": 0}
    none = DriverFacts(False, why_absent="libcuda.so.1 cannot be loaded: No such file or directory")
    why = cuda_compat.no_device_reason(insufficient, 13000, none)
    print(why)
    assert why.startswith("no CUDA device") and "no NVIDIA driver" in why
    assert "insufficient" not in why and "cudaErrorInsufficientDriver" in why
    mismatch = cuda_compat.no_device_reason(insufficient, 13000, DriverFacts(True, 12040, "550.54"), 12040)
    assert "too old" in mismatch and "550.54" in mismatch and "13.0" in mismatch
    no_dev = {"code": 100, "name": "cudaErrorNoDevice", "message": "no CUDA-capable device is detected",
              "count": 0}
    why = cuda_compat.no_device_reason(no_dev, 13000, DriverFacts(True, 13000, "580.95"))
    assert why.startswith("no CUDA device") and "cudaErrorNoDevice" in why


# ---------------------------------------------------------------- nvcc choice
N12_4, N12_8, N13_0, N11_8 = ("/cuda-12.4/nvcc", 12040), ("/cuda-12.8/nvcc", 12080), \
    ("/cuda-13.0/nvcc", 13000), ("/cuda-11.8/nvcc", 11080)


@pytest.mark.parametrize("cands,torch_cuda,driver,want", [
    ([N13_0, N12_4], 13000, 13000, N13_0[0]),          # the H200: torch cu130, driver 580
    ([N13_0, N12_4], 12040, 12020, N12_4[0]),          # r535 with torch cu124: torch's major
    ([N13_0, N12_8, N12_4], 12060, 13000, N12_4[0]),   # closest at or below torch's 12.6
    ([N13_0, N12_8], 12040, 12020, N12_8[0]),          # only a newer 12.x: still loads (minor compat)
    ([N13_0, N12_4], None, 12020, N12_4[0]),           # CPU torch / isolated build: what the driver runs
    ([N13_0, N12_4], None, None, N13_0[0]),            # no torch CUDA, no driver (this machine): first found
    ([N11_8, N13_0], 11080, None, N13_0[0]),           # 11.x cannot build sm_90a: skipped
    ([N11_8], 11080, 12000, None),                     # nothing usable: build without _cuda
    ([], None, None, None),
])
def test_choose_nvcc(cands, torch_cuda, driver, want):
    path, why = cuda_compat.choose_nvcc(cands, torch_cuda, driver)
    print(path, "--", why)
    assert path == want
    if want is None:
        assert "without bilstm_fast._cuda" in why


def test_choose_nvcc_warns_when_nothing_matches():
    """Only nvcc 13 on a CUDA 12 machine: it is used (the build must not
    fail), and the line says that _cuda may not load and what to set."""
    path, why = cuda_compat.choose_nvcc([N13_0], 12040, 12020)
    print(why)
    assert path == N13_0[0]
    assert "WARNING" in why and "CUDACXX" in why and "580.65.06" in why


def test_versions():
    assert cuda_compat.version_int("12.4") == 12040 and cuda_compat.version_int("13.0.88") == 13000
    assert cuda_compat.version_text(12090) == "12.9" and cuda_compat.version_text(None) == "unknown"
    with pytest.raises(ValueError):
        cuda_compat.version_int("cpu")


def test_nvcc_candidates_of_this_machine():
    """Every candidate runs and reports a version (nothing is invented)."""
    cands = cuda_compat.nvcc_candidates()
    print(cands)
    for path, v in cands:
        assert cuda_compat.nvcc_version(path) == v and v >= 10000


# -------------------------------------------- backend="auto" with injected facts
class FakeCuda:
    """Stands in for bilstm_fast._cuda on a machine whose driver sees one device."""
    def __init__(self):
        self.real = native.load("_cuda_emu")   # plan logic only (pure host code)

    def device_status(self):
        return {"code": 0, "name": "cudaSuccess", "message": "no error", "count": 1}

    def info(self):
        return {"emulated": False, "archs": ARCHS, "cuda_version": 13000}

    def device_limits(self, index):
        return 132, 227 * 1024

    def plan(self, *a, **k):
        return self.real.plan(*a, **k)


@pytest.fixture
def gpu_facts(monkeypatch):
    """A fake single-GPU machine: the test sets facts["cc"] / facts["coop"]."""
    facts = {"cc": (9, 0), "coop": True}
    monkeypatch.delenv(cuda_lstm.EMULATE_ENV, raising=False)
    monkeypatch.setattr(cuda_lstm, "_status_cache", {})
    fake = FakeCuda()
    monkeypatch.setattr(cuda_lstm, "_module", lambda: fake)
    monkeypatch.setattr(native, "load", lambda name, _orig=native.load: fake if name == "_cuda" else _orig(name))
    monkeypatch.setattr(cuda_compat, "device_facts",
                        lambda i: DeviceFacts(i, "Fake GPU", facts["cc"], 132, 227 * 1024, facts["coop"]))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    yield facts


def auto_for(dtype=torch.float32, H=256):
    return backends.resolve_backend("auto", "cuda", dtype, 2, H, H, False, True)


def test_auto_on_a_supported_device_picks_cuda(gpu_facts):
    assert cuda_lstm.unavailable_reason() is None
    assert auto_for() == "cuda"


@pytest.mark.parametrize("cc", [(7, 5), (7, 0)])
def test_auto_on_old_gpu_passes_cuda_by(gpu_facts, cc):
    """sm_75 / sm_70: the cuda backend is unavailable (no visible device can
    run it) and unsupported for the current device; auto never picks it."""
    facts = gpu_facts
    facts["cc"] = cc
    why = cuda_lstm.unavailable_reason()
    print(why)
    assert why.startswith("no CUDA device can run the cuda backend") and f"sm_{cc[0]}{cc[1]}" in why
    assert auto_for() != "cuda"
    with pytest.raises(RuntimeError, match="not available"):
        backends.resolve_backend("cuda", "cuda", torch.float32, 2, 256, 256, False, True)


def test_no_cooperative_launch_passes_cuda_by(gpu_facts):
    facts = gpu_facts
    facts["coop"] = False
    assert "cooperative launch" in cuda_lstm.device_reason(0)
    assert "cooperative launch" in cuda_lstm.unavailable_reason()   # the only device
    assert auto_for() != "cuda"


def test_triton_refuses_old_gpu(monkeypatch):
    """The Triton backend's reason for CUDA tensors on an sm_75 device
    (injected facts): backend="auto" passes to the next backend. (The backend
    itself stays available: CPU tensors run its interpreter.)"""
    from bilstm_fast.ops import triton_lstm
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    current = {"index": 0}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["index"])
    facts = {0: (7, 5), 1: (8, 0)}
    names = {0: "Tesla T4", 1: "A100"}
    monkeypatch.setattr(cuda_compat, "device_facts",
                        lambda i: DeviceFacts(i, names[i], facts[i], 40, 64 * 1024, True))
    assert triton_lstm.unavailable_reason() is None
    spec = backends.CallSpec("cuda", torch.float16, 2, 256, 256, False, True)
    why = triton_lstm.unsupported_reason(spec)
    print(why)
    assert "older than sm_80" in why and "sm_75" in why and "Tesla T4" in why
    current["index"] = 1                     # the sm_80 device is current: supported
    assert triton_lstm.unsupported_reason(spec) is None


def test_python_m_bilstm_fast_without_gpu():
    """`python -m bilstm_fast` on a machine without a driver says "no CUDA
    device" for the cuda backend, not the runtime's "driver version is
    insufficient", and names the driver and the runtimes."""
    if cuda_compat.driver_facts().present:
        pytest.skip("an NVIDIA driver is installed on this machine")
    out = subprocess.run([sys.executable, "-m", "bilstm_fast"], capture_output=True, text=True,
                         env={k: v for k, v in __import__("os").environ.items()
                              if k not in (cuda_lstm.EMULATE_ENV, "TRITON_INTERPRET")}, timeout=120)
    print(out.stdout, out.stderr)
    assert out.returncode == 0
    cuda_line = next(line for line in out.stdout.splitlines() if line.strip().startswith("cuda "))
    assert "unavailable: no CUDA device" in cuda_line
    assert "insufficient" not in cuda_line
    assert "driver: no NVIDIA driver" in out.stdout and "torch's CUDA runtime" in out.stdout
    if not isinstance(native.load("_cuda"), str):
        assert "bilstm_fast._cuda: CUDA runtime" in out.stdout
