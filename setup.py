"""Builds bilstm_fast's native modules by driving CMake (see CMakeLists.txt).

One CMake project builds every module into the package directory:
``_cpu`` always, ``_cuda`` when nvcc is found, ``_cuda_emu`` (the CUDA kernels
compiled as plain C++ for CPU emulation) always. Nothing links torch.
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


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
