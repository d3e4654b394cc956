#!/usr/bin/env bash
# Build llama.cpp's own llama-bench and llama-batched-bench from the llama.cpp vendored in the
# sdist of the installed llama-cpp-python, with the CPU settings its wheel is built with, so that
# `bench fidelity` compares bench against the same llama.cpp code and compile flags.
#
# Usage: scripts/build-llama-tools.sh [--sdist FILE] [--jobs N] [--force]
#   --sdist FILE  use this llama_cpp_python-<version>.tar.gz instead of `pip download`-ing it
#   --jobs N      parallel compile jobs (default 2)
#   --force       rebuild even when both binaries exist
# Environment: BENCH_TOOLS_DIR (default ${XDG_CACHE_HOME:-~/.cache}/bench/tools),
#              GGML_NATIVE (default ON, as in the wheel: llama.cpp's default when not cross-compiling).
# Prints the two binaries' paths on the last two lines of stdout.
set -euo pipefail

SDIST=""
JOBS=2
FORCE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sdist) SDIST="${2:?--sdist needs a file}"; shift 2 ;;
    --jobs) JOBS="${2:?--jobs needs a number}"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-llama-tools.sh: unknown argument '$1' (expected --sdist FILE, --jobs N, --force)" >&2; exit 2 ;;
  esac
done
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "build-llama-tools.sh: --jobs must be a positive integer, got '$JOBS'" >&2; exit 2; }
for tool in cmake ninja tar; do
  command -v "$tool" >/dev/null || { echo "build-llama-tools.sh: '$tool' is required but not on PATH" >&2; exit 2; }
done

PY="${PYTHON:-python3}"
VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null)" || {
  echo "build-llama-tools.sh: llama-cpp-python is not installed for $PY; install bench's llama extra first" >&2; exit 2; }

ROOT="${BENCH_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bench/tools}/llama.cpp-$VERSION"
SRC="$ROOT/src"
BUILD="$ROOT/build"
BIN="$BUILD/bin"
mkdir -p "$ROOT"

if [[ $FORCE -eq 0 && -x "$BIN/llama-bench" && -x "$BIN/llama-batched-bench" ]]; then
  echo "already built for llama-cpp-python $VERSION (use --force to rebuild)" >&2
  echo "$BIN/llama-bench"
  echo "$BIN/llama-batched-bench"
  exit 0
fi

if [[ -z "$SDIST" ]]; then
  SDIST="$ROOT/sdist/llama_cpp_python-$VERSION.tar.gz"
  if [[ ! -f "$SDIST" ]]; then
    echo "downloading the sdist of llama-cpp-python $VERSION" >&2
    "$PY" -m pip download "llama-cpp-python==$VERSION" --no-binary :all: --no-deps -d "$ROOT/sdist" >&2
  fi
fi
[[ -f "$SDIST" ]] || { echo "build-llama-tools.sh: sdist not found: $SDIST" >&2; exit 2; }
case "$(basename "$SDIST")" in
  llama_cpp_python-"$VERSION".tar.gz) ;;
  *) echo "build-llama-tools.sh: $SDIST is not the sdist of the installed version $VERSION" >&2; exit 2 ;;
esac

echo "extracting vendor/llama.cpp from $SDIST" >&2
rm -rf "$SRC" "$ROOT/extract"
mkdir -p "$ROOT/extract"
tar -xzf "$SDIST" -C "$ROOT/extract" --wildcards "llama_cpp_python-$VERSION/vendor/llama.cpp/*"
mv "$ROOT/extract/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC"
rm -rf "$ROOT/extract"

# The wheel's settings (llama-cpp-python's CMakeLists.txt + pyproject.toml): scikit-build-core's
# Release build type, shared libraries, llama.cpp's CPU defaults (GGML_NATIVE on, OpenMP on,
# llamafile kernels on, no BLAS). Tools, which the wheel does not build, are switched on; nothing else.
# OpenSSL only serves model downloads in common/, which neither tool uses.
unset SOURCE_DATE_EPOCH  # llama.cpp turns GGML_NATIVE's default off when this is set
cmake -S "$SRC" -B "$BUILD" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON \
  -DGGML_NATIVE="${GGML_NATIVE:-ON}" \
  -DGGML_OPENMP=ON \
  -DGGML_BLAS=OFF \
  -DLLAMA_BUILD_COMMON=ON \
  -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_OPENSSL=OFF >&2
cmake --build "$BUILD" --target llama-bench llama-batched-bench -j "$JOBS" >&2

{
  echo "llama_cpp_python_version=$VERSION"
  echo "sdist=$SDIST"
  echo "sdist_sha256=$(sha256sum "$SDIST" | cut -d' ' -f1)"
  echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  grep -E '^(CMAKE_BUILD_TYPE|BUILD_SHARED_LIBS|GGML_NATIVE|GGML_OPENMP|GGML_BLAS|GGML_LLAMAFILE|CMAKE_C_COMPILER):' "$BUILD/CMakeCache.txt"
} > "$ROOT/build-info.txt"
echo "$BIN/llama-bench"
echo "$BIN/llama-batched-bench"
