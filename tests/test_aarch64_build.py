"""The package builds for aarch64 (baseline kernels only), checked by
cross-compiling CMakeLists.txt with Debian's g++-aarch64-linux-gnu when it is
installed (CI installs it)."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CXX = shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.slow
@pytest.mark.skipif(CXX is None, reason="no aarch64 cross compiler (g++-aarch64-linux-gnu)")
@pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake")
def test_cross_compiles_for_aarch64(tmp_path):
    pybind11 = pytest.importorskip("pybind11")
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DCMAKE_BUILD_TYPE=Release",
        "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64", f"-DCMAKE_CXX_COMPILER={CXX}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}",
        f"-DPython_INCLUDE_DIR={sysconfig.get_paths()['include']}",
        "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=BOTH", "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=BOTH",
    ]
    for cmd in (configure, ["cmake", "--build", str(tmp_path), "-j", "2"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (module,) = tmp_path.glob("_core*.so")
    header = module.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
