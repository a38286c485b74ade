#!/usr/bin/env bash
# Builds llama.cpp's CLI tools (CPU only) into ${LLMQ_CACHE:-<repo>/.cache}/llama.cpp (idempotent):
#   bin/{llama-quantize,llama-perplexity,llama-imatrix,llama-completion,llama-bench}
#   src/    the llama.cpp sources (src/llama-quant.cpp, ggml/src/ggml-quants.c, ...)
#   build/  the CMake build folder
#   dl/     the sdist the sources come from
#   venv/   a Python venv holding cmake, made only when cmake is not on PATH
# The sources are the llama.cpp that the PyPI sdist of llama-cpp-python $SDIST_VERSION
# vendors (vendor/llama.cpp, llama.cpp commit $LLAMA_COMMIT). In that llama.cpp,
# llama-cli is the chat client built on the server (it needs the web UI); the classic
# one-shot CLI is llama-completion, which is what is built here.
# Needs pip, python3, make and a C/C++ compiler. No root needed.
# Set LLAMA_TARGETS to build other targets (space separated).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CACHE="${LLMQ_CACHE:-$REPO/.cache}"
LC="$CACHE/llama.cpp"
SDIST_VERSION="0.3.36"
# Not -march=native: VMs often report AMX or AVX-512 features whose state
# the kernel does not enable, and the tools then die of an illegal
# instruction (seen: llama-perplexity on AMX). AVX2+FMA+F16C runs on any
# x86-64 of the last decade; elsewhere (ARM) the default native build.
CPU_FLAGS=""
if [[ "$(uname -m)" == "x86_64" ]]; then
    CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
fi
BUILD_ID="$SDIST_VERSION portable-2"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST="$LC/dl/llama_cpp_python-$SDIST_VERSION.tar.gz"
# The llama.cpp commit that sdist vendors (.git/modules/vendor/llama.cpp/HEAD in it).
LLAMA_COMMIT="0c1e57098bba43ac29e6e3b677cdceebdd22334f"
read -r -a TARGETS <<<"${LLAMA_TARGETS:-llama-quantize llama-perplexity llama-imatrix llama-completion llama-bench}"
SRC="$LC/src"
BUILD="$LC/build"
BIN="$LC/bin"

print_bins() {
    local t
    for t in "${TARGETS[@]}"; do
        echo "  $BIN/$t"
    done
    echo
    echo "bin: $BIN"
}

have_all_bins() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ -x "$BIN/$t" ]] || return 1
    done
}

if have_all_bins && [[ "$(cat "$LC/version" 2>/dev/null)" == "$BUILD_ID" ]]; then
    echo "llama.cpp: cached (llama-cpp-python $SDIST_VERSION, llama.cpp $LLAMA_COMMIT)"
    print_bins
    exit 0
fi

mkdir -p "$LC"
TMP="$(mktemp -d "$LC/tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

ensure_cmake() {
    if command -v cmake >/dev/null 2>&1; then
        CMAKE="$(command -v cmake)"
    elif [[ -x "$LC/venv/bin/cmake" ]]; then
        CMAKE="$LC/venv/bin/cmake"
    else
        echo "cmake: not on PATH; installing it from PyPI into $LC/venv"
        rm -rf "$LC/venv"
        python3 -m venv "$LC/venv"
        "$LC/venv/bin/pip" install --quiet cmake
        CMAKE="$LC/venv/bin/cmake"
    fi
    echo "cmake: $CMAKE ($("$CMAKE" --version | head -n1))"
}

fetch_sdist() {
    if [[ ! -s "$SDIST" ]]; then
        echo "sdist: downloading llama-cpp-python==$SDIST_VERSION from PyPI"
        # --no-binary only for llama-cpp-python: its build backend's dependencies
        # (cmake, ninja) come as wheels, not built from source.
        pip download --quiet --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$SDIST_VERSION" -d "$TMP/dl"
        mkdir -p "$LC/dl"
        mv "$TMP/dl/llama_cpp_python-$SDIST_VERSION.tar.gz" "$SDIST.part"
        mv "$SDIST.part" "$SDIST"
    else
        echo "sdist: cached"
    fi
    local got
    got="$(sha256sum "$SDIST" | cut -d' ' -f1)"
    if [[ "$got" != "$SDIST_SHA256" ]]; then
        echo "ERROR: sha256 mismatch for $SDIST" >&2
        echo "  expected $SDIST_SHA256" >&2
        echo "  got      $got" >&2
        rm -f "$SDIST"
        exit 1
    fi
}

extract_src() {
    if [[ -s "$SRC/CMakeLists.txt" && "$(cat "$LC/src.version" 2>/dev/null)" == "$SDIST_VERSION" ]]; then
        echo "src: cached"
        return
    fi
    echo "src: extracting vendor/llama.cpp into $SRC"
    local top="llama_cpp_python-$SDIST_VERSION"
    mkdir -p "$TMP/src"
    # Without vendor/llama.cpp/.git: a submodule link to a .git that is not extracted.
    tar -xzf "$SDIST" -C "$TMP/src" --strip-components=3 \
        --exclude="$top/vendor/llama.cpp/.git" "$top/vendor/llama.cpp"
    if [[ ! -s "$TMP/src/src/llama-quant.cpp" || ! -s "$TMP/src/ggml/src/ggml-quants.c" ]]; then
        echo "ERROR: $SDIST has no vendor/llama.cpp/src/llama-quant.cpp or ggml/src/ggml-quants.c" >&2
        exit 1
    fi
    rm -rf "$SRC" "$BUILD" "$LC/src.version"
    mv "$TMP/src" "$SRC"
    echo "$SDIST_VERSION" >"$LC/src.version"
}

build_tools() {
    echo "build: configuring in $BUILD"
    # The build info would otherwise come from this repository's git (the source
    # tree sits inside it), so it is set here.
    "$CMAKE" -S "$SRC" -B "$BUILD" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF \
        -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_COMMIT="${LLAMA_COMMIT:0:7}" -DLLAMA_BUILD_NUMBER=0 \
        $CPU_FLAGS \
        >"$LC/configure.log" 2>&1 || {
        tail -n 40 "$LC/configure.log" >&2
        echo "ERROR: cmake configure failed; see $LC/configure.log" >&2
        exit 1
    }
    echo "build: ${TARGETS[*]} with $(nproc) jobs (log: $LC/build.log)"
    local start=$SECONDS
    "$CMAKE" --build "$BUILD" --config Release --target "${TARGETS[@]}" -j"$(nproc)" \
        >"$LC/build.log" 2>&1 || {
        tail -n 40 "$LC/build.log" >&2
        echo "ERROR: build failed; see $LC/build.log" >&2
        exit 1
    }
    echo "build: done in $((SECONDS - start)) s"
    mkdir -p "$BIN"
    local t
    for t in "${TARGETS[@]}"; do
        if [[ ! -x "$BUILD/bin/$t" ]]; then
            echo "ERROR: $BUILD/bin/$t was not built" >&2
            exit 1
        fi
        # Copy then rename, so an interrupted run never leaves a partial binary.
        cp "$BUILD/bin/$t" "$BIN/$t.part"
        mv "$BIN/$t.part" "$BIN/$t"
    done
    echo "$BUILD_ID" >"$LC/version"
}

ensure_cmake
fetch_sdist
extract_src
build_tools

echo
echo "llama.cpp tools (llama-cpp-python $SDIST_VERSION, llama.cpp $LLAMA_COMMIT):"
print_bins
echo "sources: $SRC (src/llama-quant.cpp, ggml/src/ggml-quants.c)"
