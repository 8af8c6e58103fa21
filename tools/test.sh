#!/usr/bin/env bash
# The test command: a release build with every test, then the loader and tokenizer tests again under
# AddressSanitizer + UBSan. GPU-labelled tests skip themselves where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS"
ctest --test-dir build --output-on-failure -j"$JOBS"
# Sanitizer build: CPU only, just the tests that parse untrusted files.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMISTRAL_SANITIZE=ON -DMISTRAL_CUDA=OFF >/dev/null
cmake --build build-asan -j"$JOBS" --target test_loader test_tokenizer test_tekken test_bytelevel test_gguf mistral-run
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j"$JOBS" -R '^(Loader|Tokenizer|Gguf)'
