"""Builds bilstm_fast's native modules by driving CMake (see CMakeLists.txt).

One CMake project builds every module into the package directory:
``_cpu`` always, ``_cuda`` when nvcc is found, ``_cuda_emu`` (the CUDA kernels
compiled as plain C++ for CPU emulation) always. Nothing links torch.

Which nvcc builds ``_cuda`` (it links cudart statically, so its CUDA version
decides which drivers can load it): CUDACXX when set; otherwise the rule of
bilstm_fast/ops/cuda_compat.py (choose_nvcc): the CUDA major version torch
was built with, so that ``_cuda`` loads wherever torch's own CUDA build
runs; without a CUDA build of torch, the newest nvcc this machine's driver
runs; else the first nvcc found. The choice is printed and passed to CMake.
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _cuda_compat():
    """bilstm_fast/ops/cuda_compat.py loaded by path (stdlib only: no torch and
    no package import at build time)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bilstm_cuda_compat", ROOT / "bilstm_fast/ops/cuda_compat.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _nvcc_choice() -> list:
    """CMake arguments naming the nvcc for _cuda (see the module docstring)."""
    if os.environ.get("CUDACXX"):
        print(f"bilstm_fast: nvcc from CUDACXX: {os.environ['CUDACXX']}", flush=True)
        return []
    cc = _cuda_compat()
    candidates = cc.nvcc_candidates()
    torch_cuda = cc.torch_cuda_version()  # None under build isolation (torch not importable)
    path, why = cc.choose_nvcc(candidates, torch_cuda, cc.driver_facts().cuda)
    print(f"bilstm_fast: {why}", flush=True)
    if path is None:
        return ["-DBILSTM_BUILD_CUDA=OFF"]
    args = [f"-DCMAKE_CUDA_COMPILER={path}"]
    if torch_cuda is not None:
        args.append(f"-DBILSTM_TORCH_CUDA={cc.version_text(torch_cuda)}")
    return args


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        # Directory of the package inside the build (or the source tree for -e).
        pkg_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", str(ROOT),
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DBILSTM_OUTPUT_DIR={pkg_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        ]
        configure += _nvcc_choice()
        jobs = str(os.cpu_count() or 2)
        for cmd in (configure, ["cmake", "--build", ".", "--parallel", jobs]):
            if subprocess.run(cmd, cwd=build_dir).returncode != 0:
                sys.exit(f"bilstm_fast: native build failed at `{' '.join(cmd)}` "
                         f"(see the compiler output above; build dir {build_dir})")

    def copy_extensions_to_source(self):
        # pip install -e / --inplace: CMake built every module (_cpu, _cuda_emu,
        # _cuda) into build_lib, but setuptools copies only the declared _cpu.
        import shutil
        import sysconfig

        super().copy_extensions_to_source()
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        for so in (Path(self.build_lib) / "bilstm_fast").glob("_*" + suffix):
            shutil.copyfile(so, ROOT / "bilstm_fast" / so.name)


setup(ext_modules=[Extension("bilstm_fast._cpu", sources=[])],
      cmdclass={"build_ext": CMakeBuild})
