#!/usr/bin/env bash
# Installs what sonicmoe needs to build on a fresh Debian machine with the CUDA 13 toolkit:
# a C++20 compiler, CMake, Ninja, GoogleTest (system packages, only when missing), ccache when
# the package manager can get it, and the CUTLASS/CuTe 4.2 headers from the PyPI wheel
# nvidia-cutlass==4.2.0.0 (headers only, --no-deps) into the git-ignored third_party/.
# Safe to run again: every step checks first.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cutlass_version=4.2.0.0
cutlass_dir="$root/third_party/cutlass-$cutlass_version"

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
command -v ninja >/dev/null || missing+=(ninja-build)
[ -f /usr/include/gtest/gtest.h ] || missing+=(libgtest-dev)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v ccache >/dev/null; then
  # Optional: speeds up rebuilds; the build works without it.
  (apt-get install -y -qq ccache >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq ccache >/dev/null 2>&1; }) \
    && echo "setup: installed ccache" || echo "setup: ccache not available, building without it"
fi

if [ ! -f "$cutlass_dir/include/cute/tensor.hpp" ]; then
  echo "setup: fetching CUTLASS/CuTe $cutlass_version headers from PyPI (nvidia-cutlass, --no-deps)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --disable-pip-version-check "nvidia-cutlass==$cutlass_version" -d "$tmp"
  python3 - "$tmp" "$cutlass_dir" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("nvidia_cutlass-*.whl"))
prefix = "cutlass_library/source/include/"
staging = dest.with_name(dest.name + ".partial")
shutil.rmtree(staging, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = staging / "include" / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
staging.rename(dest)
PY
fi
echo "setup: CUTLASS headers at $cutlass_dir/include"

# GoogleTest sources beside the headers, for machines that cannot install it (the GPU machine):
# CMake builds them from third_party/googletest when find_package(GTest) fails there.
if [ ! -f "$root/third_party/googletest/CMakeLists.txt" ] && [ -f /usr/src/googletest/CMakeLists.txt ]; then
  cp -r /usr/src/googletest "$root/third_party/googletest"
fi

# Build requirements of the Python package (pyproject.toml) as pure-Python wheels, for machines
# without a package index (the GPU machine): scripts/install_python.sh installs from here.
wheels_dir="$root/third_party/wheels"
if ! ls "$wheels_dir"/scikit_build_core-*.whl "$wheels_dir"/pathspec-*.whl "$wheels_dir"/packaging-*.whl >/dev/null 2>&1; then
  echo "setup: fetching scikit-build-core, pathspec, packaging wheels into third_party/wheels"
  mkdir -p "$wheels_dir"
  python3 -m pip download -q --no-deps --disable-pip-version-check --only-binary=:all: \
    -d "$wheels_dir" scikit-build-core pathspec packaging \
    || echo "setup: could not download the Python build wheels (no index?); scripts/install_python.sh will need them"
fi
