#!/usr/bin/env bash
# The one script to run when a GPU is lent (DESIGN.md, "Working with a GPU").
#
#   tools/gpu-check.sh --prepare   on the CPU machine: build for sm_90 in build-gpu/ and copy what the
#                                  GPU machine needs into gpu-bin/ (binaries + stories260K test data);
#                                  then carry gpu-bin to the device.
#   tools/gpu-check.sh             on the GPU machine: run the `gpu` tests, compute-sanitizer
#                                  (memcheck, racecheck) on the kernel tests, and the benchmark table
#                                  (random Mistral-7B-shape fp16 weights, ours vs transformers).
#
# Without a GPU it dry-runs: each GPU step says it skipped and why. The full log goes to
# $OUT/gpu-check.log (or gpu-check-out/ when $OUT is unset); the table is printed last.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUTDIR=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/gpu-check.log
exec > >(tee "$LOG") 2>&1
SECONDS=0
step() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*"; }

if [ "${1:-}" = "--prepare" ]; then
  step "build for sm_90 in build-gpu/"
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMISTRAL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DMISTRAL_NATIVE=OFF >/dev/null || exit 1
  cmake --build build-gpu -j"${JOBS:-2}" --target mistral-run test_cuda || exit 1
  rm -rf gpu-bin && mkdir -p gpu-bin/data/models
  cp build-gpu/mistral-run build-gpu/tests/test_cuda gpu-bin/
  if [ -d ../shared/data/models/stories260K ]; then cp -r ../shared/data/models/stories260K gpu-bin/data/models/; fi
  du -sh gpu-bin
  echo "prepared gpu-bin/: carry it (run tool: carry [\"gpu-bin\"])"
  exit 0
fi

BIN=${GPU_BIN:-$ROOT/gpu-bin}
export MISTRAL_SOURCE_DIR=$ROOT
[ -d "$BIN/data" ] && export MISTRAL_SHARED_DATA=$BIN/data
HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then HAVE_GPU=1; fi
step "device"
if [ $HAVE_GPU = 1 ]; then nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv; else echo "no GPU: dry run (GPU steps skip)"; fi

if [ ! -x "$BIN/mistral-run" ] || [ ! -x "$BIN/test_cuda" ] || ! "$BIN/mistral-run" --help >/dev/null 2>&1; then
  step "no usable prebuilt binaries in $BIN: building here"
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMISTRAL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DMISTRAL_NATIVE=OFF >/dev/null && cmake --build build-gpu -j"$(nproc)" --target mistral-run test_cuda || {
    echo "FAIL: build"; exit 1; }
  BIN=$ROOT/build-gpu; cp build-gpu/tests/test_cuda build-gpu/ 2>/dev/null
fi

step "gpu tests"
timeout 240 "$BIN/test_cuda" --gtest_output=json:"$OUTDIR/test_cuda.json" 2>&1 | tail -40
TEST_RC=${PIPESTATUS[0]}
echo "test_cuda exit code: $TEST_RC"

step "compute-sanitizer"
SAN="skipped"
if [ $HAVE_GPU = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/test_cuda" \
    --gtest_filter='CudaOps.RmsNorm:CudaOps.EmbedSwigluAdd:CudaOps.Rope:CudaOps.AttentionAndCacheWrite' >"$OUTDIR/memcheck.log" 2>&1
  MC=$?
  timeout 120 compute-sanitizer --tool racecheck --error-exitcode 3 "$BIN/test_cuda" \
    --gtest_filter='CudaOps.RmsNorm:CudaOps.AttentionAndCacheWrite' >"$OUTDIR/racecheck.log" 2>&1
  RC=$?
  tail -3 "$OUTDIR/memcheck.log" "$OUTDIR/racecheck.log"
  SAN="memcheck rc=$MC, racecheck rc=$RC (0 = clean; logs in $OUTDIR)"
else
  echo "skipped: no GPU or no compute-sanitizer"
fi

step "benchmark: random Mistral-7B-shape weights, fp16"
BENCH_OK=0
if [ $HAVE_GPU = 1 ]; then
  CK=${CKPT_DIR:-/tmp/mistral7b-random}
  rm -rf "$CK"
  timeout 300 python3 tools/bench_transformers.py --out "$CK" --json-out "$OUTDIR/transformers.json" && BENCH_OK=1
  if [ $BENCH_OK = 1 ]; then
    for run in "512 4 512" "2048 4 2048" "128 64 512" "4096 64 512"; do
      set -- $run
      timeout 120 "$BIN/mistral-run" bench -m "$CK" --device cuda --skip-bandwidth --json \
        --prompt-tokens "$1" --gen-tokens "$2" --chunk "$3" >"$OUTDIR/ours_p$1.json" || echo "bench $run failed"
    done
    PROMPT=$(python3 -c "import json;print(json.load(open('$OUTDIR/transformers.json'))['greedy']['prompt'])")
    timeout 120 "$BIN/mistral-run" -m "$CK" --device cuda -p "$PROMPT" --temp 0 --ignore-eos -n 32 --json \
      >"$OUTDIR/ours_greedy.json" || echo "greedy run failed"
  fi
else
  echo "skipped: no GPU"
fi

step "summary"
python3 - "$OUTDIR" "$TEST_RC" "$SAN" "$BENCH_OK" <<'PY'
import json, os, sys
out, test_rc, san, bench_ok = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except Exception:
        return None
t = load("test_cuda.json")
if t:
    n, fails = t.get("tests", 0), t.get("failures", 0)
    skipped = sum(1 for s in t["testsuites"] for c in s["testsuite"] if c.get("result") == "SKIPPED")
    print(f"gpu tests: {n} run, {fails} failed, {skipped} skipped (exit {test_rc})")
else:
    print(f"gpu tests: no report (exit {test_rc})")
print(f"compute-sanitizer: {san}")
if not bench_ok:
    print("benchmark: skipped")
    sys.exit(0)
tr = load("transformers.json")
bw = tr["copy_gbs"]
floor = bw * 1e9 / tr["decode_bytes"]
print(f"device: {tr['device']}; copy {bw:.0f} GB/s (read+write); decode floor {floor:.1f} tok/s "
      f"({tr['decode_bytes']/1e9:.2f} GB per token)")
print(f"{'metric':<26}{'mistral-run':>14}{'transformers':>14}{'ours/tf':>9}{'ours/floor':>12}")
rows = [("prefill 512 tok/s", "ours_p512.json", "prefill_tok_s", tr["prefill"].get("512"), None),
        ("prefill 2048 tok/s", "ours_p2048.json", "prefill_tok_s", tr["prefill"].get("2048"), None),
        ("decode ctx 128 tok/s", "ours_p128.json", "decode_tok_s", tr["decode"].get("128"), floor),
        ("decode ctx 4096 tok/s", "ours_p4096.json", "decode_tok_s", tr["decode"].get("4096"), floor)]
for name, f, key, ref, fl in rows:
    o = load(f)
    v = o[key] if o else float("nan")
    ratio = v / ref if ref else float("nan")
    fr = f"{v / fl:.0%}" if fl else "-"
    print(f"{name:<26}{v:>14.1f}{(ref or float('nan')):>14.1f}{ratio:>9.2f}{fr:>12}")
o = load("ours_p128.json")
if o:
    print(f"decode ctx 128 achieved {o['decode_tok_s'] * tr['decode_bytes'] / 1e9:.0f} GB/s of weights vs copy {bw:.0f} GB/s")
g = load("ours_greedy.json")
if g:
    ref = tr["greedy"]
    same = sum(1 for a, b in zip(g["ids"], ref["ids"]) if a == b)
    first = next((i for i, (a, b) in enumerate(zip(g["ids"], ref["ids"])) if a != b), None)
    print(f"greedy tokens: prompt ids equal: {g['prompt_ids'] == ref['prompt_ids']}; "
          f"{same}/{len(ref['ids'])} equal" + (f", first difference at step {first}" if first is not None else ""))
PY
echo "full log: $LOG"
