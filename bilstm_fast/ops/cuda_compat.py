"""What the GPU backends need of a CUDA device, its driver and the CUDA
toolkit that built ``bilstm_fast._cuda`` -- pure rules over plain facts
(tests inject the facts), and the probes that read the facts on a machine.

Standard library only: setup.py loads this file by path to choose the nvcc
(no torch at build time), cuda_lstm.py and triton_lstm.py use it at run time.

Versions are CUDA's integers: 12040 = CUDA 12.4 (what cudaRuntimeGetVersion,
cuDriverGetVersion and CUDART_VERSION report).

The rules
---------
* Driver vs runtime: a CUDA runtime of major version M runs on any driver
  that supports CUDA M.0 or newer (CUDA's minor-version compatibility), so
  ``bilstm_fast._cuda`` loads iff major(driver) >= major(its runtime).
  ``_cuda`` links cudart statically, so its runtime is the nvcc it was built
  with; torch's wheels bring their own.
* The nvcc the build uses (``choose_nvcc``, called by setup.py): the CUDA
  major version torch was built with, so that ``_cuda`` loads wherever
  torch's own CUDA build runs; among those the version closest to torch's
  (equal, else the newest older one, else the oldest newer one). Without a
  CUDA build of torch (the CPU wheel, or torch not importable during the
  build): the newest nvcc the installed driver can run; without a driver
  either, the first nvcc found (CUDACXX, PATH, /usr/local/cuda). nvcc
  older than 12.0 is never used (no sm_90a). CUDACXX set by the user is
  taken as it is.
* Compute capability (``cuda_arch_reason``): the kernels are built as SASS
  for sm_80, sm_90, sm_90a plus PTX of each. A device of capability X.Y runs
  SASS sm_XZ with Z <= Y (so 8.6 and 8.9 run sm_80); sm_90a only runs on 9.0;
  a device newer than every SASS (10.x, 12.x) runs the newest portable PTX
  (compute_90) through the driver's JIT. Older than 8.0: unsupported.
* Cooperative launch (the persistent kernels' grid barrier needs it): a
  device without it is unsupported by the cuda backend.
* Triton (``triton_arch_reason``): compute capability 8.0 or newer (the
  kernels use TF32 and bf16 tensor-core dots; sm_80 and sm_90 are what the
  compile report covers).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

# Oldest Linux driver of each CUDA major version (minor-version compatibility).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
MIN_NVCC = 12000       # sm_90a needs CUDA 12.0
MIN_CC = (8, 0)        # both GPU backends


# ------------------------------------------------------------------ versions
def version_int(text: str) -> int:
    """"12.4" or "12.4.131" -> 12040."""
    m = re.match(r"\s*(\d+)\.(\d+)", text)
    if not m:
        raise ValueError(f"not a CUDA version: {text!r}")
    return int(m.group(1)) * 1000 + int(m.group(2)) * 10


def version_text(v: Optional[int]) -> str:
    """12040 -> "12.4"; None -> "unknown"."""
    return "unknown" if v is None else f"{v // 1000}.{v % 1000 // 10}"


def major(v: int) -> int:
    return v // 1000


def driver_runs(driver_cuda: int, runtime_cuda: int) -> bool:
    """Whether a driver supporting CUDA ``driver_cuda`` runs a runtime of
    version ``runtime_cuda`` (minor-version compatibility within a major)."""
    return major(driver_cuda) >= major(runtime_cuda)


# --------------------------------------------------------------------- facts
@dataclass(frozen=True)
class DriverFacts:
    """The NVIDIA driver of this machine, as far as it can be seen."""
    present: bool                  # libcuda could be loaded
    cuda: Optional[int] = None     # cuDriverGetVersion: newest CUDA it supports
    version: Optional[str] = None  # "535.104.05" (kernel module), when readable
    why_absent: str = ""           # when not present: what failed

    def describe(self) -> str:
        if not self.present:
            return f"no NVIDIA driver ({self.why_absent})"
        v = f"driver {self.version}" if self.version else "driver"
        return f"{v} (supports CUDA {version_text(self.cuda)})"


@dataclass(frozen=True)
class DeviceFacts:
    """One CUDA device, from the driver API."""
    index: int
    name: str
    cc: tuple[int, int]            # compute capability (major, minor)
    sm_count: int
    smem_optin: int                # max dynamic shared memory per block, bytes
    cooperative: bool              # cooperative launch supported

    @property
    def sm(self) -> str:
        return f"sm_{self.cc[0]}{self.cc[1]}"

    def describe(self) -> str:
        return f"device {self.index} ({self.name}, {self.sm})"


# --------------------------------------------------------------------- rules
def cuda_arch_reason(dev: DeviceFacts, archs: Iterable[str]) -> Optional[str]:
    """None when the cuda backend's build can run on ``dev`` (see the module
    docstring), else a sentence saying why not. ``archs``: the build's list,
    e.g. ["80", "90", "90a"] (``_cuda.info()["archs"]``)."""
    archs = list(archs)
    built = ", ".join(f"sm_{a}" for a in archs) or "no architecture"
    if dev.cc < MIN_CC:
        return (f"{dev.describe()} is older than sm_80: bilstm_fast._cuda has kernels for {built} "
                "only (they need compute capability 8.0 or newer)")
    plain = [(int(a[:-1]), int(a[-1])) for a in archs if a.isdigit() and len(a) >= 2]
    if any(a[0] == dev.cc[0] and a[1] <= dev.cc[1] for a in plain):
        pass                                       # SASS of the same major
    elif any(a.endswith("a") and a[:-1] == f"{dev.cc[0]}{dev.cc[1]}" for a in archs):
        pass                                       # arch-specific SASS, exact match
    elif not plain or dev.cc < max(plain):
        return f"{dev.describe()}: bilstm_fast._cuda has no kernel image for it (built for {built})"
    # else newer than every SASS: the driver JIT-compiles the newest PTX
    if not dev.cooperative:
        return (f"{dev.describe()} does not support cooperative launch, which the persistent "
                "kernels' grid barrier needs")
    return None


def cuda_arch_note(dev: DeviceFacts, archs: Iterable[str]) -> str:
    """How the build runs on ``dev`` (for reports): SASS or PTX JIT."""
    archs = list(archs)
    plain = [(int(a[:-1]), int(a[-1])) for a in archs if a.isdigit() and len(a) >= 2]
    same = [a for a in plain if a[0] == dev.cc[0] and a[1] <= dev.cc[1]]
    if f"{dev.cc[0]}{dev.cc[1]}a" in archs:
        return f"SASS sm_{dev.cc[0]}{dev.cc[1]}a"
    if same:
        a = max(same)
        return f"SASS sm_{a[0]}{a[1]}"
    if plain and dev.cc > max(plain):
        a = max(plain)
        return f"PTX compute_{a[0]}{a[1]}, compiled by the driver at first launch (no SASS for {dev.sm})"
    return "no kernel image"


def triton_arch_reason(dev: DeviceFacts) -> Optional[str]:
    """None when the Triton kernels can run on ``dev``, else why not."""
    if dev.cc < MIN_CC:
        return (f"{dev.describe()} is older than sm_80: the Triton kernels use TF32 and bf16 "
                "tensor-core dots (compute capability 8.0 or newer)")
    return None


def driver_reason(driver: DriverFacts, runtime_cuda: Optional[int],
                  torch_cuda: Optional[int] = None) -> Optional[str]:
    """Why ``bilstm_fast._cuda`` (built with CUDA runtime ``runtime_cuda``)
    cannot run on this driver, or None when the driver is new enough (or its
    version is unknown). The sentence names both versions and the remedy."""
    if not driver.present or driver.cuda is None or runtime_cuda is None:
        return None
    if driver_runs(driver.cuda, runtime_cuda):
        return None
    need = MIN_DRIVER.get(major(runtime_cuda))
    need_text = f" (driver {need} or newer)" if need else ""
    if torch_cuda is not None and driver_runs(driver.cuda, torch_cuda):
        fix = (f"rebuild it with the nvcc of torch's CUDA {version_text(torch_cuda)} "
               f"(a CUDA {major(torch_cuda)}.x toolkit): CUDACXX=/path/to/cuda-{major(torch_cuda)}.x/bin/nvcc "
               "pip install --no-build-isolation --no-deps -e .")
    else:
        fix = (f"rebuild it with an nvcc of CUDA {major(driver.cuda)}.x or older "
               "(CUDACXX=/path/to/nvcc pip install --no-build-isolation --no-deps -e .), "
               "or update the driver")
    return (f"the NVIDIA {driver.describe()} is too old for bilstm_fast._cuda, which was built "
            f"with the CUDA {version_text(runtime_cuda)} runtime and needs a driver for CUDA "
            f"{major(runtime_cuda)}{need_text}; torch here uses CUDA {version_text(torch_cuda)}. {fix}")


def no_device_reason(status: dict, runtime_cuda: Optional[int], driver: DriverFacts,
                     torch_cuda: Optional[int] = None) -> str:
    """The cuda backend's reason when ``_cuda.device_status()`` (``status``:
    {code, name, message, count}) found no usable device. Starts with "no
    CUDA device" unless the cause is a driver older than the runtime, which
    it then names (that one is not a missing device)."""
    mismatch = driver_reason(driver, runtime_cuda, torch_cuda)
    if mismatch is not None:
        return mismatch
    call = f"cudaGetDeviceCount: {status.get('name')} ({status.get('code')})"
    if not driver.present:
        return f"no CUDA device: {driver.describe()}; {call}"
    if status.get("code") == 0:
        return "no CUDA device: cudaGetDeviceCount found none"
    return f"no CUDA device: {call}: {status.get('message')} ({driver.describe()})"


def choose_nvcc(candidates: Iterable[tuple[str, int]], torch_cuda: Optional[int],
                driver_cuda: Optional[int]) -> tuple[Optional[str], str]:
    """(path of the nvcc to build _cuda with, or None for none; one line saying
    why) from ``candidates`` [(path, version)] in search order, by the rule of
    the module docstring."""
    cands = list(dict.fromkeys(candidates))
    found = ", ".join(f"{p} ({version_text(v)})" for p, v in cands) or "none"
    usable = [(p, v) for p, v in cands if v >= MIN_NVCC]
    if not usable:
        return None, (f"no nvcc of CUDA 12.0 or newer found (found: {found}); "
                      "building without bilstm_fast._cuda")
    loadable = [(p, v) for p, v in usable if driver_cuda is None or driver_runs(driver_cuda, v)]
    driver_text = f"the driver supports CUDA {version_text(driver_cuda)}" if driver_cuda else "no driver found"
    if torch_cuda is not None:
        same = [(p, v) for p, v in loadable if major(v) == major(torch_cuda)]
        if same:
            older = [c for c in same if c[1] <= torch_cuda]
            path, v = max(older, key=lambda c: c[1]) if older else min(same, key=lambda c: c[1])
            return path, (f"nvcc {version_text(v)} at {path}: torch was built with CUDA "
                          f"{version_text(torch_cuda)} ({driver_text})")
    if driver_cuda is not None and loadable:
        path, v = max(loadable, key=lambda c: c[1])
        why = f"nvcc {version_text(v)} at {path}: the newest this machine's driver runs ({driver_text})"
        if torch_cuda is not None:
            why += (f"; torch was built with CUDA {version_text(torch_cuda)}, no nvcc of CUDA "
                    f"{major(torch_cuda)} was found (found: {found})")
        return path, why
    path, v = usable[0]
    why = f"nvcc {version_text(v)} at {path}: the first one found"
    if torch_cuda is not None or driver_cuda is not None:
        need = MIN_DRIVER.get(major(v), "?")
        why += (f". WARNING: torch's CUDA is {version_text(torch_cuda)} and {driver_text}, so "
                f"bilstm_fast._cuda will need a driver for CUDA {major(v)} ({need} or newer) and may "
                f"not load here (found: {found}); set CUDACXX to a matching nvcc")
    return path, why


# -------------------------------------------------------------------- probes
_LIBCUDA = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
_libcuda = None
_libcuda_error = ""


def _driver_lib():
    """The CUDA driver library (ctypes), or None; loading it initializes nothing."""
    global _libcuda, _libcuda_error
    if _libcuda is None and not _libcuda_error:
        errors = []
        for name in _LIBCUDA:
            try:
                _libcuda = ctypes.CDLL(name)
                break
            except OSError as e:
                errors.append(str(e).split(":")[-1].strip() or name)
        else:
            _libcuda_error = f"{_LIBCUDA[0]} cannot be loaded: {errors[0] if errors else 'not found'}"
    return _libcuda


def _kernel_module_version() -> Optional[str]:
    """The NVIDIA kernel module's version ("535.104.05"), read without a subprocess."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
    return m.group(1) if m else None


_driver: Optional[DriverFacts] = None


def driver_facts() -> DriverFacts:
    """This machine's driver (cached). cuDriverGetVersion needs no cuInit."""
    global _driver
    if _driver is None:
        lib = _driver_lib()
        if lib is None:
            _driver = DriverFacts(False, why_absent=_libcuda_error)
        else:
            v = ctypes.c_int(0)
            rc = lib.cuDriverGetVersion(ctypes.byref(v))
            _driver = DriverFacts(True, v.value if rc == 0 and v.value > 0 else None,
                                  _kernel_module_version())
    return _driver


_ATTR = {"sm_count": 16, "cc_major": 75, "cc_minor": 76, "cooperative": 95, "smem_optin": 97}
_devices: dict[int, Optional[DeviceFacts]] = {}


def device_facts(index: int) -> Optional[DeviceFacts]:
    """Facts of CUDA device ``index`` (the ordinal torch and the runtime use:
    CUDA_VISIBLE_DEVICES applies), or None when there is no such device or no
    driver. Cached per index."""
    if index not in _devices:
        _devices[index] = _read_device(index)
    return _devices[index]


def _read_device(index: int) -> Optional[DeviceFacts]:
    lib = _driver_lib()
    if lib is None or lib.cuInit(0) != 0:
        return None
    dev, count = ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or not 0 <= index < count.value:
        return None
    if lib.cuDeviceGet(ctypes.byref(dev), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, dev)
    vals = {}
    for key, attr in _ATTR.items():
        v = ctypes.c_int(0)
        if lib.cuDeviceGetAttribute(ctypes.byref(v), attr, dev) != 0:
            return None
        vals[key] = v.value
    return DeviceFacts(index, name.value.decode(errors="replace"), (vals["cc_major"], vals["cc_minor"]),
                       vals["sm_count"], vals["smem_optin"], bool(vals["cooperative"]))


def device_count() -> int:
    """Devices the driver API sees (0 without a driver)."""
    lib = _driver_lib()
    count = ctypes.c_int(0)
    if lib is None or lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def torch_cuda_version() -> Optional[int]:
    """The CUDA version torch was built with, or None (CPU wheel, or no torch)."""
    try:
        import torch
    except Exception:  # not installed (a build under isolation), or a broken install
        return None
    return version_int(torch.version.cuda) if getattr(torch.version, "cuda", None) else None


# ------------------------------------------------------------ nvcc (build)
def nvcc_version(path: str) -> Optional[int]:
    """``nvcc --version``'s release as an int, or None when it does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out.stdout)
    return version_int(m.group(1)) if out.returncode == 0 and m else None


def nvcc_candidates(env: Optional[dict] = None) -> list[tuple[str, int]]:
    """Every nvcc this machine has, in search order: PATH, CUDA_HOME /
    CUDA_PATH, /usr/local/cuda, /usr/local/cuda-X.Y, /opt/cuda; one entry per
    distinct binary, with its version."""
    env = os.environ if env is None else env
    paths = [shutil.which("nvcc", path=env.get("PATH"))]
    paths += [str(Path(env[k]) / "bin" / "nvcc") for k in ("CUDA_HOME", "CUDA_PATH") if env.get(k)]
    paths += ["/usr/local/cuda/bin/nvcc"]
    paths += sorted((str(p) for p in Path("/usr/local").glob("cuda-*/bin/nvcc")), reverse=True)
    paths += ["/opt/cuda/bin/nvcc"]
    seen, out = set(), []
    for p in paths:
        if not p or not os.access(p, os.X_OK):
            continue
        real = os.path.realpath(p)
        if real in seen:
            continue
        seen.add(real)
        v = nvcc_version(p)
        if v is not None:
            out.append((p, v))
    return out
