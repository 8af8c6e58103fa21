#!/usr/bin/env bash
# The one script to run when a GPU is lent (DESIGN.md, "Working with a GPU").
#
#   tools/gpu-check.sh --prepare     on the CPU machine: build mistral-run and test_cuda for sm_90 in
#                                    build-gpu/ and copy what the GPU machine needs into gpu-bin/
#                                    (binaries + the stories260K test data), gzipped as gpu-bin.tgz;
#                                    carry gpu-bin.tgz to the device (this script unpacks it there).
#   tools/gpu-check.sh [PHASE...]    on the GPU machine; PHASE is any of tests, sanitize, bench, batch,
#                                    quant, pdl, kernels, attn, half, fused, knockout, stalls, profile
#                                    (default: tests sanitize bench, about 7 minutes on an H100/H200;
#                                    tests ~25 s, bench ~70 s, quant ~90 s for QUANT_LIST=int8,int4,
#                                    kernels ~15 s).
#
# tests:    the `gpu`-labelled tests (every kernel against the CPU op, models end to end, graph = eager).
# sanitize: compute-sanitizer memcheck and racecheck on the kernel tests.
# bench:    random weights of Mistral-7B's exact shape (fp16, made on the GPU by tools/bench_transformers.py,
#           which also times transformers on them in the same run): prefill at 512 and 2048 tokens,
#           decode at 128 and 4096 tokens of context, GB/s against the measured copy bandwidth, and
#           greedy-token agreement up to the first near-tie.
# batch:    batched greedy output equal to each prompt alone at batch sizes 1, 3, 8 (stories260K given a
#           window of 16; tools/batch_equivalence.py), and output tok/s at 64 sequences vs 1 (7B shape).
# quant:    7B-shape decode with int8, NF4 and int4 weights against fp16 in the same process
#           (QUANT_LIST=int8,int4 picks some).
# pdl:      programmatic dependent launch (MISTRAL_CUDA_PDL=1 forces it on, 0 off; by default on for
#           quantized layers only): all gpu tests with it on, fp16 decode off vs on (and on without the
#           preloading GEMV kernels) on the bench phase's checkpoint (run after bench in the same call),
#           quantized decode with it off (PDL_QUANT=0 skips that).
# kernels:  a 7B layer's decode GEMVs timed launch by launch (tools/gemv_bench.cu), fp16 and quantized,
#           the quantized ones at several K-split targets, in GB/s against the copy rate.
# attn:     a 7B layer's split-KV decode attention timed launch by launch (tools/attn_bench.cu) at contexts
#           of 128 to 32768 over fp32 and fp16 caches, each kernel variant, in GB/s against the copy rate;
#           Nsight Compute's stall reasons of the default variant at 4096; then decode at 4096 with the
#           one-address tiles against the default (on the bench phase's checkpoint, else the synthetic
#           7B shape; ATTN_AB=1 adds the untiled block and the merge inside the partial kernel); the
#           decode tests with the untiled block and with the one-address tiles.
# half:     the quantized GEMVs' fp16 and int8 paths (MISTRAL_CUDA_QUANT_HALF=1, MISTRAL_CUDA_QUANT_I8=1):
#           gemv_bench against the fp32 path, stories260K perplexity and KL with each path and on the CPU
#           (HALF_DECODE=1 adds 7B-shape int8 / int4 decode with each path alone).
# fused:    MISTRAL_CUDA_FUSED_NORM=1 (norms and residual adds folded into the GEMVs) and
#           MISTRAL_CUDA_DECODE_ROPE=1 (RoPE + cache write inside the decode attention): all gpu tests
#           with both; fp16 decode along a ladder, one switch added a step (folded norms, RoPE fold,
#           one-address tiles, PDL for every launch with the preloading GEMVs by size, or without them;
#           FUSED_LADDER=0 keeps the first and last two steps); int8 / int4 with both folds and the fp16
#           path, then the int8 path.
# knockout: fp16 decode at ctx 128 with the norms, RoPE + cache writes, attention or GEMVs left out in turn
#           (MISTRAL_CUDA_KNOCKOUT; wrong outputs, timing only): what each costs inside the real step.
# stalls:   Nsight Compute on single gemv_bench launches: issue utilization, occupancy and the stall
#           reasons of the quantized and fp16 GEMVs (about a minute).
# profile:  Nsight Compute over about one eager decode step of the 7B shape, then over a 2048-token
#           prefill: time and DRAM GB/s by kernel (tools/ncu_summary.py), to show where the time goes;
#           PROFILE_QUANT=int4 (int8, nf4) adds a decode step of that format.
# Without a GPU it dry-runs: each GPU step says it skipped and why. Everything is logged to
# gpu-check.log (in gpu-check-out/ when $OUT is unset); each phase appends its result to
# summary.txt at once, and the summary is printed last.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# On the device tool's machine ($OUT set) the files are written to a work folder and handed back as
# $OUT/gpu-check.tgz plus summary.txt and gpu-check.log (the tool returns at most 8 files); summary.txt
# is copied after every result, so a run stopped at its time limit still returns what it found.
if [ -n "${OUT:-}" ]; then OUTDIR=${GPU_CHECK_WORK:-/tmp/gpu-check-work}; else OUTDIR=$ROOT/gpu-check-out; fi
mkdir -p "$OUTDIR"
LOG=$OUTDIR/gpu-check.log
exec > >(tee -a "$LOG") 2>&1
SECONDS=0
SUMMARY=$OUTDIR/summary.txt
hand_back() {
  [ -n "${OUT:-}" ] || return 0
  cp "$SUMMARY" "$LOG" "$OUT/" 2>/dev/null
  tar czf "$OUT/gpu-check.tgz" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")" 2>/dev/null
}
trap hand_back EXIT
trap 'exit 143' TERM INT
step() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*"; }
note() { echo "$*" | tee -a "$SUMMARY"; [ -z "${OUT:-}" ] || cp "$SUMMARY" "$OUT/" 2>/dev/null; }
# quant_lines FILE LABEL: a summary line per format of a `bench --quant-list --json` output (its decode
# against the fp16 baseline of the same process), each starting with LABEL.
quant_lines() {
  python3 - "$1" "$2" <<'PY' | tee -a "$SUMMARY"
import json, sys
path, label = sys.argv[1], sys.argv[2]
try:
    for line in open(path):
        if line.strip():
            o = json.loads(line)
            print(f"{label}: quant {o['quant']:<5} decode {o['decode_tok_s']:7.1f} tok/s vs fp16 "
                  f"{o['baseline']['decode_tok_s']:7.1f} = {o['decode_speedup']:.2f}x")
except Exception as e:
    print(f"{label}: no quant result ({e})")
PY
}

if [ "${1:-}" = "--prepare" ]; then
  step "build for sm_90 in build-gpu/"
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMISTRAL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DMISTRAL_NATIVE=OFF >/dev/null || exit 1
  cmake --build build-gpu -j"${JOBS:-2}" --target mistral-run test_cuda gemv_bench attn_bench || exit 1
  rm -rf gpu-bin && mkdir -p gpu-bin/data/models
  cp build-gpu/mistral-run build-gpu/tests/test_cuda build-gpu/gemv_bench build-gpu/attn_bench gpu-bin/
  if [ -d ../shared/data/models/stories260K ]; then cp -r ../shared/data/models/stories260K gpu-bin/data/models/; fi
  newest=$(objdump -T gpu-bin/mistral-run gpu-bin/test_cuda | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)
  echo "newest glibc symbol needed: $newest (the GPU image must have at least this)"
  ldd gpu-bin/mistral-run | grep -E 'cublas|cudart' || true
  du -sh gpu-bin
  # The device tool carries at most 64 MiB with the working tree: the binaries (~76 MB, mostly sm_90 code)
  # travel gzipped (~35 MB) and are unpacked on the device by this script.
  tar czf gpu-bin.tgz gpu-bin && ls -la gpu-bin.tgz
  echo "prepared gpu-bin/ and gpu-bin.tgz: carry the archive to the device (run tool: carry [\"gpu-bin.tgz\"])"
  exit 0
fi

PHASES=${*:-tests sanitize bench}
# gpu-bin.tgz (made by --prepare, carried to the device) unpacked where gpu-bin/ did not come along.
if [ -z "${GPU_BIN:-}" ] && [ ! -d "$ROOT/gpu-bin" ] && [ -f "$ROOT/gpu-bin.tgz" ]; then
  tar xzf "$ROOT/gpu-bin.tgz" -C "$ROOT" && echo "unpacked gpu-bin.tgz"
fi
# Mistral-7B's exact shape as a synthetic model made by mistral-run itself (fp16 random weights, nothing
# downloaded, no Python needed): the batch and quant phases use it, and bench falls back to it when the
# transformers reference cannot run.
SYN7B="--hidden 4096 --intermediate 14336 --layers 32 --heads 32 --kv-heads 8 --vocab 32000 --window 4096 --synthetic-dtype f16"
: >"$SUMMARY"
BIN=${GPU_BIN:-$ROOT/gpu-bin}
export MISTRAL_SOURCE_DIR=$ROOT
[ -d "$BIN/data" ] && export MISTRAL_SHARED_DATA=$BIN/data
# cuBLAS is linked dynamically: also look where pip's CUDA wheels put it.
for d in $(python3 - 2>/dev/null <<'PY'
import glob, site, os
for sp in site.getsitepackages():
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "libcublas.so.*"), recursive=True):
        print(os.path.dirname(lib))
PY
); do LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do [ -d "$d" ] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$d"; done
export LD_LIBRARY_PATH

HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then HAVE_GPU=1; fi
step "device"
if [ $HAVE_GPU = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
else
  note "no GPU: dry run (GPU steps skip)"
fi

if [ ! -x "$BIN/mistral-run" ] || ! "$BIN/mistral-run" --help >/dev/null 2>"$OUTDIR/bin-check.txt"; then
  step "prebuilt binaries in $BIN are missing or do not start"
  cat "$OUTDIR/bin-check.txt" 2>/dev/null
  [ -x "$BIN/mistral-run" ] && ldd "$BIN/mistral-run" | grep "not found"
  echo "building here instead"
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMISTRAL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DMISTRAL_NATIVE=OFF >/dev/null && cmake --build build-gpu -j"$(nproc)" --target mistral-run test_cuda || {
    note "FAIL: no usable binaries and the build failed (see the log)"; exit 1; }
  mkdir -p build-gpu/bin && cp build-gpu/mistral-run build-gpu/tests/test_cuda build-gpu/bin/
  BIN=$ROOT/build-gpu/bin
fi

for phase in $PHASES; do case $phase in
tests)
  step "gpu tests"
  timeout 180 "$BIN/test_cuda" --gtest_output=json:"$OUTDIR/test_cuda.json" >"$OUTDIR/test_cuda.log" 2>&1
  rc=$?
  grep -E '^\[ *(FAILED|SKIPPED|PASSED) *\]|Failure|rel_err|expected' "$OUTDIR/test_cuda.log" | head -40
  python3 - "$OUTDIR/test_cuda.json" "$rc" <<'PY' | tee -a "$SUMMARY"
import json, sys
try:
    t = json.load(open(sys.argv[1]))
    skipped = sum(1 for s in t["testsuites"] for c in s["testsuite"] if c.get("result") == "SKIPPED")
    print(f"gpu tests: {t['tests']} run, {t['failures']} failed, {skipped} skipped (exit {sys.argv[2]})")
except Exception as e:
    print(f"gpu tests: no report (exit {sys.argv[2]})")
PY
  ;;
sanitize)
  step "compute-sanitizer"
  if [ $HAVE_GPU = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
    # SANITIZE_FILTER narrows memcheck to some tests; SANITIZE_QUICK=1 skips the general racecheck (the
    # prefill attention one still runs): for a short device budget.
    F=${SANITIZE_FILTER:-'CudaOps.*:-CudaOps.DecodeAttentionLongContext'}
    timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/test_cuda" --gtest_filter="$F" \
      >"$OUTDIR/memcheck.log" 2>&1
    mc=$?
    rc=skipped
    : >"$OUTDIR/racecheck.log"
    if [ "${SANITIZE_QUICK:-0}" != 1 ]; then
      timeout 90 compute-sanitizer --tool racecheck --error-exitcode 3 "$BIN/test_cuda" \
        --gtest_filter='CudaOps.RmsNorm:CudaOps.DecodeAttentionLongContext:CudaOps.QuantMatmul:CudaOps.DecodeRows' \
        >"$OUTDIR/racecheck.log" 2>&1
      rc=$?
    fi
    timeout 90 compute-sanitizer --tool racecheck --error-exitcode 3 "$BIN/test_cuda" \
      --gtest_filter='CudaOps.PrefillAttentionTiles' >"$OUTDIR/racecheck_prefill.log" 2>&1
    rp=$?
    tail -n 2 "$OUTDIR/memcheck.log" "$OUTDIR/racecheck.log" "$OUTDIR/racecheck_prefill.log"
    note "compute-sanitizer: memcheck ($F) exit $mc, racecheck exit $rc, racecheck (prefill attention) exit $rp" \
      "(exit codes: 0 clean, 3 errors found, 124 timed out)"
  else
    note "compute-sanitizer: skipped (no GPU or no compute-sanitizer)"
  fi
  ;;
bench)
  step "benchmark: random Mistral-7B-shape weights, fp16"
  if [ $HAVE_GPU != 1 ]; then note "benchmark: skipped (no GPU)"; continue; fi
  CK=${CKPT_DIR:-/tmp/mistral7b-random}
  rm -rf "$CK"
  if ! timeout 300 python3 tools/bench_transformers.py --out "$CK" --json-out "$OUTDIR/transformers.json"; then
    note "benchmark: the transformers reference failed (see the log); mistral-run alone on a synthetic 7B shape"
    for run in "512 4 512" "2048 4 2048" "128 64 512" "4096 64 512"; do
      set -- $run
      timeout 120 "$BIN/mistral-run" bench $SYN7B --device cuda --prompt-tokens "$1" --gen-tokens "$2" --chunk "$3" \
        --reps 2 | tee -a "$SUMMARY" || echo "bench $run failed"
    done
    continue
  fi
  # Best of 3 repetitions: the first one also pays for loading kernels on first use, cuBLAS's first
  # calls, scratch allocation and recording the decode graph (run 3 timed one repetition).
  for run in "512 4 512" "2048 4 2048" "128 64 512" "4096 64 512"; do
    set -- $run
    timeout 90 "$BIN/mistral-run" bench -m "$CK" --device cuda --skip-bandwidth --json --reps 3 \
      --prompt-tokens "$1" --gen-tokens "$2" --chunk "$3" >"$OUTDIR/ours_p$1.json" || echo "bench $run failed"
  done
  # Decode by sampling (the candidates found on the device): top-k, which the candidates always settle,
  # and a nucleus, which may take the whole row on random weights.
  timeout 90 "$BIN/mistral-run" bench -m "$CK" --device cuda --skip-bandwidth --json --reps 3 --prompt-tokens 128 \
    --gen-tokens 64 --temp 0.7 --top-k 40 >"$OUTDIR/ours_topk.json" || echo "bench (top-k) failed"
  timeout 90 "$BIN/mistral-run" bench -m "$CK" --device cuda --skip-bandwidth --json --reps 3 --prompt-tokens 128 \
    --gen-tokens 64 --temp 0.7 --top-p 0.95 >"$OUTDIR/ours_topp.json" || echo "bench (top-p) failed"
  # The fp16 KV cache (--kv-type f16): half the bytes decode attention reads at long contexts.
  for ctx in 128 4096; do
    timeout 90 "$BIN/mistral-run" bench -m "$CK" --device cuda --skip-bandwidth --json --reps 3 --prompt-tokens $ctx \
      --gen-tokens 64 --kv-type f16 >"$OUTDIR/ours_kv16_p$ctx.json" || echo "bench (kv f16, ctx $ctx) failed"
  done
  PROMPT=$(python3 -c "import json;print(json.load(open('$OUTDIR/transformers.json'))['greedy']['prompt'])")
  timeout 90 "$BIN/mistral-run" -m "$CK" --device cuda -p "$PROMPT" --temp 0 --ignore-eos -n 32 --json \
    >"$OUTDIR/ours_greedy.json" || echo "greedy run failed"
  CK=$CK python3 - "$OUTDIR" <<'PY' | tee -a "$SUMMARY"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception:
        return None
tr = load("transformers.json")
bw = tr["copy_gbs"]
floor = bw * 1e9 / tr["decode_bytes"]
print(f"benchmark on {tr['device']}: copy {bw:.0f} GB/s (read+write); decode floor {floor:.1f} tok/s "
      f"({tr['decode_bytes']/1e9:.2f} GB read per token)")
print(f"{'metric':<24}{'mistral-run':>12}{'transformers':>14}{'ours/tf':>9}{'ours/floor':>12}")
rows = [("prefill 512 tok/s", "ours_p512.json", "prefill_tok_s", tr["prefill"].get("512"), None),
        ("prefill 2048 tok/s", "ours_p2048.json", "prefill_tok_s", tr["prefill"].get("2048"), None),
        ("decode ctx 128 tok/s", "ours_p128.json", "decode_tok_s", tr["decode"].get("128"), floor),
        ("decode ctx 4096 tok/s", "ours_p4096.json", "decode_tok_s", tr["decode"].get("4096"), floor)]
for name, f, key, ref, fl in rows:
    o = load(f)
    v = o[key] if o else float("nan")
    ratio = v / ref if ref else float("nan")
    fr = f"{v / fl:.0%}" if fl else "-"
    print(f"{name:<24}{v:>12.1f}{(ref or float('nan')):>14.1f}{ratio:>9.2f}{fr:>12}")
o = load("ours_p2048.json")
if o and tr.get("gemm_bf16_tflops"):
    # Prefill work: 2 flops per weight per token (fp16, embedding excluded) plus causal attention,
    # 4 * layers * hidden flops per (query, key) pair within the window.
    c = json.load(open(os.path.join(os.environ.get("CK", "/tmp/mistral7b-random"), "config.json")))
    T, W = 2048, c.get("sliding_window") or 1 << 30
    pairs = sum(min(i + 1, W) for i in range(T))
    flops = 2 * tr["decode_bytes"] / 2 * T + 4 * c["num_hidden_layers"] * c["hidden_size"] * pairs
    tf = flops * o["prefill_tok_s"] / T / 1e12
    print(f"prefill 2048: {tf:.0f} TFLOP/s = {tf / tr['gemm_bf16_tflops']:.0%} of the cuBLAS bf16 GEMM rate "
          f"({tr['gemm_bf16_tflops']:.0f} TFLOP/s, 8192^3, same run; goal 50%)")
o = load("ours_p128.json")
if o:
    print(f"decode ctx 128: {o['decode_tok_s'] * tr['decode_bytes'] / 1e9:.0f} GB/s of weights read vs copy {bw:.0f} GB/s")
o = load("ours_p128.json")
for name, f in (("top-k 40", "ours_topk.json"), ("top-p 0.95", "ours_topp.json")):
    s = load(f)
    if s and o:
        print(f"decode ctx 128 sampled (temperature 0.7, {name}): {s['decode_tok_s']:.1f} tok/s = "
              f"{s['decode_tok_s'] / o['decode_tok_s']:.1%} of greedy; whole-row draws {s['draws_from_whole_row']}")
for ctx in (128, 4096):
    s, o = load(f"ours_kv16_p{ctx}.json"), load(f"ours_p{ctx}.json")
    if s and o:
        print(f"decode ctx {ctx} with an fp16 KV cache: {s['decode_tok_s']:.1f} tok/s = {s['decode_tok_s'] / floor:.0%} "
              f"of the floor, {s['decode_tok_s'] / o['decode_tok_s']:.3f}x the fp32 cache")
g = load("ours_greedy.json")
if g:
    ref = tr["greedy"]
    m = ref.get("margins", [])
    clear = next((i for i, x in enumerate(m) if x < 0.05), len(ref["ids"]))
    first = next((i for i, (a, b) in enumerate(zip(g["ids"], ref["ids"])) if a != b), None)
    print(f"greedy: prompt ids equal {g['prompt_ids'] == ref['prompt_ids']}; first differing step "
          f"{first if first is not None else 'none'} of {len(ref['ids'])}; transformers' first near-tie "
          f"(top-2 gap < 0.05) at step {clear}; agreement up to it: {first is None or first >= clear}")
else:
    print("greedy: our run failed")
PY
  ;;
batch)
  # Issue 5 on CUDA: batched greedy outputs equal each prompt run alone (stories260K given a window of
  # 16, so some prompts run past it), then output throughput at 64 sequences vs 1 on the 7B shape.
  step "batch: equivalence on stories260K, throughput at 64 sequences"
  if [ $HAVE_GPU != 1 ]; then note "batch: skipped (no GPU)"; continue; fi
  S=${MISTRAL_SHARED_DATA:-$ROOT/../shared/data}/models/stories260K
  W=/tmp/stories-w16 && rm -rf "$W" && mkdir -p "$W"
  python3 -c "import json,sys;c=json.load(open('$S/config.json'));c['sliding_window']=16;json.dump(c,open('$W/config.json','w'))"
  ln -s "$S/model.safetensors" "$S/tokenizer.json" "$W/"
  timeout 150 python3 tools/batch_equivalence.py --bin "$BIN/mistral-run" --model "$W" --device cuda --out "$OUTDIR/batch" \
    --sizes 1 3 8 | tee -a "$SUMMARY"
  timeout 240 "$BIN/mistral-run" bench $SYN7B --device cuda --skip-bandwidth --json --batch 64 \
    --prompt-tokens 128 --gen-tokens 32 >"$OUTDIR/ours_batch64.json" || echo "batch bench failed"
  python3 - "$OUTDIR/ours_batch64.json" <<'PY' | tee -a "$SUMMARY"
import json, sys
try:
    o = json.load(open(sys.argv[1]))
    print(f"batch 7B fp16: decode {o['decode_tok_s']:.1f} tok/s at 1 sequence, {o['batch_decode_tok_s']:.1f} tok/s "
          f"in total at {o['batch']} = {o['batch_decode_tok_s'] / o['decode_tok_s']:.1f}x (goal 20x)")
except Exception as e:
    print(f"batch 7B fp16: no result ({e})")
PY
  ;;
quant)
  # Issue 7 on CUDA: decode at batch 1 on the 7B shape, int8 / NF4 / int4 against the same weights in
  # fp16, one process (bench --quant-list builds the fp16 baseline once and alternates each quantized
  # model with it), best of 3 repetitions.
  step "quant: 7B-shape decode, int8 / nf4 / int4 vs fp16"
  if [ $HAVE_GPU != 1 ]; then note "quant: skipped (no GPU)"; continue; fi
  QL=${QUANT_LIST:-int8,nf4,int4}
  timeout 240 "$BIN/mistral-run" bench $SYN7B --device cuda --skip-bandwidth --json --quant-list "$QL" \
    --reps 3 --prompt-tokens 128 --gen-tokens 64 >"$OUTDIR/ours_quant.jsonl" || echo "bench --quant-list failed"
  # QUANT_AB=1: again with x read from global memory instead of the shared-memory copy (kernels/quant_gemv.cu).
  if [ "${QUANT_AB:-0}" = 1 ]; then
    MISTRAL_CUDA_QUANT_STAGE=0 timeout 240 "$BIN/mistral-run" bench $SYN7B --device cuda --skip-bandwidth --json \
      --quant-list "$QL" --reps 3 --prompt-tokens 128 --gen-tokens 64 >"$OUTDIR/ours_quant_nostage.jsonl" ||
      echo "bench --quant-list (no staging) failed"
    quant_lines "$OUTDIR/ours_quant_nostage.jsonl" "without the x copy"
  fi
  python3 - "$OUTDIR" <<'PY' | tee -a "$SUMMARY"
import json, os, sys
goal = {"int8": 1.6, "nf4": 2.5, "int4": 2.5}
got = {}
try:
    for line in open(os.path.join(sys.argv[1], "ours_quant.jsonl")):
        if line.strip():
            o = json.loads(line)
            got[o["quant"]] = o
except Exception as e:
    print(f"quant: no results ({e})")
for q in ("int8", "nf4", "int4"):
    o = got.get(q)
    if o is None and q not in os.environ.get("QUANT_LIST", "int8,nf4,int4").split(","):
        continue
    if o is None:
        print(f"quant {q}: no result")
        continue
    print(f"quant {q:<5} decode {o['decode_tok_s']:7.1f} tok/s vs fp16 {o['baseline']['decode_tok_s']:7.1f} = "
          f"{o['decode_speedup']:.2f}x (goal {goal[q]}x); prefill {o['prefill_speedup']:.2f}x; "
          f"{o['weights_gb']:.2f} GB read per token")
PY
  ;;
pdl)
  # Programmatic dependent launch (kernels/pdl.cuh; by default on for quantized layers, MISTRAL_CUDA_PDL=1
  # or 0 forces it): the model and GEMV tests with it on, then fp16 decode on the bench phase's checkpoint
  # (else the synthetic 7B shape) with it off and on, and the quantized formats with it off.
  step "pdl: MISTRAL_CUDA_PDL=1 against the default"
  if [ $HAVE_GPU != 1 ]; then note "pdl: skipped (no GPU)"; continue; fi
  MISTRAL_CUDA_PDL=1 timeout 120 "$BIN/test_cuda" >"$OUTDIR/test_pdl.log" 2>&1
  rc=$?
  grep -E '^\[ *FAILED *\]|Failure' "$OUTDIR/test_pdl.log" | head -20
  note "pdl tests (all of test_cuda): $(grep -E '^\[ *(PASSED|FAILED) *\] [0-9]' "$OUTDIR/test_pdl.log" | tr '\n' ' ')(exit $rc)"
  CK=${CKPT_DIR:-/tmp/mistral7b-random}
  if [ -d "$CK" ]; then KM="-m $CK"; else KM="$SYN7B"; fi  # the bench phase's checkpoint, else the synthetic 7B
  for pdl in 0 1; do
    MISTRAL_CUDA_PDL=$pdl timeout 90 "$BIN/mistral-run" bench $KM --device cuda --skip-bandwidth --json --reps 3 \
      --prompt-tokens 128 --gen-tokens 64 >"$OUTDIR/pdl$pdl.json" || echo "bench (pdl $pdl) failed"
  done
  # And the split-KV attention's merge inside the partial kernel (MISTRAL_CUDA_DECODE_COMBINE=0) against
  # the separate combine kernel (the default), without PDL.
  MISTRAL_CUDA_DECODE_COMBINE=0 timeout 90 "$BIN/mistral-run" bench $KM --device cuda --skip-bandwidth --json \
    --reps 3 --prompt-tokens 128 --gen-tokens 64 >"$OUTDIR/combine_separate.json" || echo "bench (separate combine) failed"
  # And the fp16 GEMVs without the register-preloading kernel for small launches (gemv.cu, preload_for).
  MISTRAL_CUDA_GEMV_PRELOAD=0 timeout 90 "$BIN/mistral-run" bench $KM --device cuda --skip-bandwidth --json \
    --reps 3 --prompt-tokens 128 --gen-tokens 64 >"$OUTDIR/preload0.json" || echo "bench (no preload) failed"
  # And fp16 with PDL but without the register-preloading kernels (PDL otherwise takes them for every
  # launch), then with them chosen by launch size as without PDL.
  for pre in 0 auto; do
    MISTRAL_CUDA_PDL=1 MISTRAL_CUDA_GEMV_PRELOAD=$pre timeout 90 "$BIN/mistral-run" bench $KM --device cuda \
      --skip-bandwidth --json --reps 3 --prompt-tokens 128 --gen-tokens 64 >"$OUTDIR/pdl1_preload$pre.json" ||
      echo "bench (pdl, preload $pre) failed"
  done
  if [ "${PDL_QUANT:-1}" != 0 ]; then  # PDL_QUANT=0: fp16 only. Quantized layers take PDL by default: this is without.
    MISTRAL_CUDA_PDL=0 timeout 150 "$BIN/mistral-run" bench $KM --device cuda --skip-bandwidth --json \
      --quant-list "${QUANT_LIST:-int8,nf4,int4}" --reps 3 --prompt-tokens 128 --gen-tokens 64 \
      >"$OUTDIR/pdl_quant.jsonl" || echo "bench --quant-list (no pdl) failed"
  fi
  python3 - "$OUTDIR" <<'PY' | tee -a "$SUMMARY"
import json, os, sys
d = sys.argv[1]
try:
    off = json.load(open(os.path.join(d, "pdl0.json")))["decode_tok_s"]
    on = json.load(open(os.path.join(d, "pdl1.json")))["decode_tok_s"]
    print(f"pdl: fp16 decode ctx 128 {off:.1f} tok/s off, {on:.1f} on = {on / off:.3f}x")
    sep = json.load(open(os.path.join(d, "combine_separate.json")))["decode_tok_s"]
    print(f"decode attention: merged in the partial kernel {sep:.1f} tok/s, separate combine kernel {off:.1f}")
    pre0 = json.load(open(os.path.join(d, "preload0.json")))["decode_tok_s"]
    print(f"fp16 GEMVs: MISTRAL_CUDA_GEMV_PRELOAD=0 {pre0:.1f} tok/s, default {off:.1f}")
    for pre in ("0", "auto"):
        pp = json.load(open(os.path.join(d, f"pdl1_preload{pre}.json")))["decode_tok_s"]
        print(f"pdl: fp16 decode ctx 128 with PDL and MISTRAL_CUDA_GEMV_PRELOAD={pre} {pp:.1f} tok/s = "
              f"{pp / off:.3f}x of the default")
except Exception as e:
    print(f"pdl: no fp16 result ({e})")
PY
  [ "${PDL_QUANT:-1}" = 0 ] || quant_lines "$OUTDIR/pdl_quant.jsonl" "pdl off"
  ;;
kernels)
  # A 7B layer's decode GEMVs timed launch by launch (tools/gemv_bench.cu): fp16 and each quantized
  # format, the quantized ones at several K-split targets; then fp16 and int4 again with PDL.
  step "kernels: a 7B layer's decode GEMVs, launch by launch"
  if [ $HAVE_GPU != 1 ] || [ ! -x "$BIN/gemv_bench" ]; then note "kernels: skipped (no GPU or no gemv_bench)"; continue; fi
  timeout 120 "$BIN/gemv_bench" --reps 200 | tee "$OUTDIR/gemv_bench.txt" | tee -a "$SUMMARY"
  # The K-split target with the least layer time summed over the quantized formats; QUANT_WARPS=best
  # makes the later phases of this call (quant, pdl, profile) run with it (MISTRAL_CUDA_QUANT_WARPS).
  best=$(awk '$3 == "layer" && $1 != "f16" && $2 != "-" { t[$2] += $4 } END { b = ""; for (w in t) if (b == "" || t[w] < t[b]) b = w; print b }' \
    "$OUTDIR/gemv_bench.txt")
  note "kernels: K-split target with the least quantized layer time: ${best:-none}"
  if [ "${QUANT_WARPS:-}" = best ] && [ -n "$best" ]; then
    export MISTRAL_CUDA_QUANT_WARPS=$best
    note "kernels: later phases run with MISTRAL_CUDA_QUANT_WARPS=$best"
  fi
  # The fp16 GEMV kernel choice (gemv.cu, preload_for): the 32-register kernel for every launch, then the
  # register-preloading one for every launch; the default picks by launch size.
  for pre in 0 1; do
    echo "fp16 with MISTRAL_CUDA_GEMV_PRELOAD=$pre:" | tee -a "$SUMMARY"
    MISTRAL_CUDA_GEMV_PRELOAD=$pre timeout 60 "$BIN/gemv_bench" --reps 200 --formats f16 | grep -v '^format' |
      tee -a "$SUMMARY"
  done
  # The tensor-core GEMVs (an experiment, MISTRAL_CUDA_QUANT_MMA=1): the same layer, to set against the
  # int4 and int8 rows above.
  echo "tensor-core GEMVs (kernels/quant_mma.cu), to compare with int4 and int8:" | tee -a "$SUMMARY"
  timeout 60 "$BIN/gemv_bench" --reps 200 --formats int4mma,int8mma | grep -v '^format' | tee -a "$SUMMARY"
  echo "with MISTRAL_CUDA_PDL=1:" | tee -a "$SUMMARY"
  MISTRAL_CUDA_PDL=1 timeout 60 "$BIN/gemv_bench" --reps 200 --formats f16,int8,int4 --warps 24 | tee -a "$SUMMARY"
  for pre in 0 auto; do
    echo "fp16 with MISTRAL_CUDA_PDL=1 MISTRAL_CUDA_GEMV_PRELOAD=$pre:" | tee -a "$SUMMARY"
    MISTRAL_CUDA_PDL=1 MISTRAL_CUDA_GEMV_PRELOAD=$pre timeout 60 "$BIN/gemv_bench" --reps 200 --formats f16 |
      grep -v '^format' | tee -a "$SUMMARY"
  done
  ;;
attn)
  step "attn: a 7B layer's decode attention, launch by launch"
  if [ $HAVE_GPU != 1 ] || [ ! -x "$BIN/attn_bench" ]; then note "attn: skipped (no GPU or no attn_bench)"; continue; fi
  timeout 120 "$BIN/attn_bench" --reps 100 | tee "$OUTDIR/attn_bench.txt" | tee -a "$SUMMARY"
  # The untiled block (MISTRAL_CUDA_DECODE_TILED=0; still the one for head_dim > 128) through the decode tests.
  MISTRAL_CUDA_DECODE_TILED=0 timeout 120 "$BIN/test_cuda" --gtest_filter='CudaOps.AttentionAndCacheWrite:CudaOps.DecodeAttentionLongContext:CudaOps.HalfKvCacheAttention:CudaOps.DecodeRows*:CudaModel.BatchedDecodeEqualsSolo' \
    >"$OUTDIR/test_untiled.log" 2>&1
  rc=$?
  grep -E '^\[ *FAILED *\]|Failure' "$OUTDIR/test_untiled.log" | head -20
  note "attn: decode tests with the untiled block: $(grep -E '^\[ *(PASSED|FAILED) *\] [0-9]' "$OUTDIR/test_untiled.log" | tr '\n' ' ')(exit $rc)"
  # The one-address tiles (MISTRAL_CUDA_DECODE_FAST_TILES=1, an experiment) through the same tests.
  MISTRAL_CUDA_DECODE_FAST_TILES=1 timeout 120 "$BIN/test_cuda" --gtest_filter='CudaOps.AttentionAndCacheWrite:CudaOps.DecodeAttentionLongContext:CudaOps.HalfKvCacheAttention:CudaOps.DecodeRows*:CudaModel.*' \
    >"$OUTDIR/test_fast_tiles.log" 2>&1
  rc=$?
  grep -E '^\[ *FAILED *\]|Failure' "$OUTDIR/test_fast_tiles.log" | head -20
  note "attn: decode and model tests with MISTRAL_CUDA_DECODE_FAST_TILES=1: $(grep -E '^\[ *(PASSED|FAILED) *\] [0-9]' "$OUTDIR/test_fast_tiles.log" | tr '\n' ' ')(exit $rc)"
  if command -v ncu >/dev/null 2>&1; then
    for kv in f32 f16; do
      f="$OUTDIR/stalls_attn_$kv.csv"
      timeout 90 ncu --csv --page raw --print-units base -k regex:decode_partial --launch-skip 3 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section SchedulerStats "$BIN/attn_bench" --only tiled+merge --kv $kv --ctx 4096 --reps 3 >"$f" 2>"$f.err"
      python3 tools/ncu_stalls.py "$f" "attention $kv ctx 4096" | tee -a "$SUMMARY"
    done
  fi
  # End to end at 4096 tokens of context: the one-address tiles against the default (the bench phase's
  # figures when it ran in this call, else timed here on the synthetic 7B shape); ATTN_AB=1 adds the
  # untiled block and the merge inside the partial kernel (measured in run 8: slower).
  CK=${CKPT_DIR:-/tmp/mistral7b-random}
  if [ -d "$CK" ]; then KM="-m $CK"; else KM="$SYN7B"; fi
  for kv in f32 f16; do
    def=$([ $kv = f32 ] && echo ours_p4096.json || echo ours_kv16_p4096.json)
    [ -f "$OUTDIR/$def" ] || timeout 120 "$BIN/mistral-run" bench $KM --device cuda --skip-bandwidth --json \
      --reps 3 --prompt-tokens 4096 --gen-tokens 64 --kv-type $kv >"$OUTDIR/$def" || echo "bench failed"
    MISTRAL_CUDA_DECODE_FAST_TILES=1 timeout 120 "$BIN/mistral-run" bench $KM --device cuda --skip-bandwidth --json \
      --reps 3 --prompt-tokens 4096 --gen-tokens 64 --kv-type $kv >"$OUTDIR/fast_tiles_$kv.json" || echo "bench failed"
    [ "${ATTN_AB:-0}" = 1 ] || continue
    MISTRAL_CUDA_DECODE_TILED=0 timeout 120 "$BIN/mistral-run" bench $KM --device cuda --skip-bandwidth --json \
      --reps 3 --prompt-tokens 4096 --gen-tokens 64 --kv-type $kv >"$OUTDIR/untiled_$kv.json" || echo "bench failed"
    MISTRAL_CUDA_DECODE_COMBINE=0 timeout 120 "$BIN/mistral-run" bench $KM --device cuda --skip-bandwidth --json \
      --reps 3 --prompt-tokens 4096 --gen-tokens 64 --kv-type $kv >"$OUTDIR/combine_$kv.json" || echo "bench failed"
  done
  python3 - "$OUTDIR" <<'PY' | tee -a "$SUMMARY"
import json, os, sys
d = sys.argv[1]
def tok(name):
    try:
        return json.load(open(os.path.join(d, name)))["decode_tok_s"]
    except Exception:
        return None
for kv, default in (("f32", "ours_p4096.json"), ("f16", "ours_kv16_p4096.json")):
    base, fast = tok(default), tok(f"fast_tiles_{kv}.json")
    unt, com = tok(f"untiled_{kv}.json"), tok(f"combine_{kv}.json")
    if base and fast:
        line = (f"attn: decode ctx 4096, {kv} cache: default {base:.1f} tok/s, one-address tiles {fast:.1f} "
                f"({fast / base:.3f}x)")
        if unt and com:
            line += (f", untiled block {unt:.1f} ({base / unt:.3f}x), merge in the partial kernel {com:.1f} "
                     f"({com / base:.3f}x of the default)")
        print(line)
    else:
        print(f"attn: decode ctx 4096, {kv} cache: missing results")
PY
  ;;
half)
  # The quantized GEMVs' fp16 and int8 paths (experiments: MISTRAL_CUDA_QUANT_HALF=1, MISTRAL_CUDA_QUANT_I8=1;
  # quant_gemv.cuh QuantXMath): the layer's GEMVs launch by launch against the fp32 path (h: fp16, i: int8;
  # names ending in n: with the decode step's folds, what the norm costs a GEMV), and stories260K's
  # perplexity and KL from full precision on the GPU with each path (--chunk 4: the GEMV path, not
  # cuBLAS) and on the CPU. HALF_DECODE=1 adds 7B-shape decode with int8 and int4 against fp16 with each
  # path alone (the fused phase times them with the folds).
  step "half: the quantized GEMVs' fp16 and int8 paths against the fp32 one"
  if [ $HAVE_GPU != 1 ]; then note "half: skipped (no GPU)"; continue; fi
  [ -x "$BIN/gemv_bench" ] && timeout 120 "$BIN/gemv_bench" --reps 200 --warps 24 \
    --formats f16,f16n,int8,int8h,int8hn,int8i,int8in,int4,int4h,int4hn,int4i,int4in |
    tee "$OUTDIR/gemv_half.txt" | grep -E ' layer ' | tee -a "$SUMMARY"
  for path in half i8; do
    [ "${HALF_DECODE:-0}" = 1 ] || break  # the fused phase times decode with each path (and the folds)
    if [ $path = half ]; then env_on="MISTRAL_CUDA_QUANT_HALF=1 MISTRAL_CUDA_QUANT_I8=0"; else
      env_on="MISTRAL_CUDA_QUANT_HALF=0 MISTRAL_CUDA_QUANT_I8=1"; fi
    env $env_on timeout 150 "$BIN/mistral-run" bench $SYN7B --device cuda --skip-bandwidth --json \
      --quant-list "${QUANT_LIST:-int8,int4}" --reps 3 --prompt-tokens 128 --gen-tokens 64 \
      >"$OUTDIR/quant_$path.jsonl" || echo "bench --quant-list ($path path) failed"
  done
  # The int8 path end to end against the CPU's int8-activation path (the same arithmetic; the x of the two
  # backends may differ in their last bits, so a rounding may flip). Also in the tests phase.
  timeout 120 "$BIN/test_cuda" --gtest_filter='CudaModel.QuantizedInt8ActivationsMatchCpu' >"$OUTDIR/test_i8_model.log" 2>&1
  rc=$?
  grep -E 'Failure|expected|rel' "$OUTDIR/test_i8_model.log" | head -10
  note "half: CudaModel.QuantizedInt8ActivationsMatchCpu: $(grep -E '^\[ *(PASSED|FAILED) *\] [0-9]' "$OUTDIR/test_i8_model.log" | tr '\n' ' ')(exit $rc)"
  S260=${MISTRAL_SHARED_DATA:-}/models/stories260K
  if [ -d "$S260" ]; then
    for q in int8 int4; do
      for path in f32 half i8; do
        MISTRAL_CUDA_QUANT_HALF=$([ $path = half ] && echo 1 || echo 0) \
          MISTRAL_CUDA_QUANT_I8=$([ $path = i8 ] && echo 1 || echo 0) timeout 60 "$BIN/mistral-run" perplexity \
          -m "$S260" --device cuda --quant $q --chunk 4 --kl-ref --json \
          -f tests/data/perplexity/stories260K_samples.txt >"$OUTDIR/ppl_${q}_$path.json" ||
          echo "perplexity ($q, $path path) failed"
      done
      MISTRAL_CPU_QUANT_I8=0 timeout 120 "$BIN/mistral-run" perplexity -m "$S260" --device cpu --quant $q --kl-ref --json \
        -f tests/data/perplexity/stories260K_samples.txt >"$OUTDIR/ppl_${q}_cpu.json" || echo "perplexity ($q, cpu) failed"
    done
  fi
  if [ "${HALF_DECODE:-0}" = 1 ]; then
    quant_lines "$OUTDIR/quant_half.jsonl" "half (fp16 path)"
    quant_lines "$OUTDIR/quant_i8.jsonl" "half (int8 path)"
  fi
  python3 - "$OUTDIR" <<'PY' | tee -a "$SUMMARY"
import json, os, sys
d = sys.argv[1]
for q in ("int8", "int4"):
    row = []
    for tag in ("cpu", "f32", "half", "i8"):
        try:
            o = json.load(open(os.path.join(d, f"ppl_{q}_{tag}.json")))
            row.append(f"{tag} ppl {o['ppl']:.4f} (full {o['ref_ppl']:.4f}) kl {o['kl_mean']:.5f} "
                       f"top-1 {o['top1_agreement']:.4f}")
        except Exception:
            row.append(f"{tag} missing")
    print(f"half: stories260K {q}: " + "; ".join(row))
PY
  ;;
fused)
  # The decode-step fusions, experiments: MISTRAL_CUDA_FUSED_NORM=1 (RMSNorms folded into the products that
  # read them, residual adds into the products that write them) and MISTRAL_CUDA_DECODE_ROPE=1 (RoPE and
  # the cache write done by the split-KV attention kernel). Every gpu test with both on (the model tests
  # then decode through them), then fp16 decode at ctx 128 along a ladder of switches (the folds, the
  # one-address attention tiles, PDL for every launch) on the bench phase's checkpoint (else the synthetic
  # 7B shape), and int8 / int4 with both folds and the fp16 path, then the int8 path, on the synthetic 7B
  # shape (each against the folded fp16 of its process).
  step "fused: norms and residual adds folded into the GEMVs, RoPE into the attention"
  if [ $HAVE_GPU != 1 ]; then note "fused: skipped (no GPU)"; continue; fi
  MISTRAL_CUDA_FUSED_NORM=1 MISTRAL_CUDA_DECODE_ROPE=1 timeout 150 "$BIN/test_cuda" >"$OUTDIR/test_fused.log" 2>&1
  rc=$?
  grep -E '^\[ *FAILED *\]|Failure' "$OUTDIR/test_fused.log" | head -20
  note "fused: all gpu tests with MISTRAL_CUDA_FUSED_NORM=1 MISTRAL_CUDA_DECODE_ROPE=1: $(grep -E '^\[ *(PASSED|FAILED) *\] [0-9]' "$OUTDIR/test_fused.log" | tr '\n' ' ')(exit $rc)"
  CK=${CKPT_DIR:-/tmp/mistral7b-random}
  if [ -d "$CK" ]; then KM="-m $CK"; else KM="$SYN7B"; fi
  # fp16 decode, each step of the ladder adding one switch to the ones before (FUSED_LADDER=0: only the
  # first and the last two), so that the step that helps or hurts shows; its last two differ in the GEMVs
  # under PDL (preloading kernels by size, or none). Every step sets every switch (an exported one does not
  # leak into step 0).
  LADDER_ENV=(
    "MISTRAL_CUDA_FUSED_NORM=0 MISTRAL_CUDA_DECODE_ROPE=0 MISTRAL_CUDA_DECODE_FAST_TILES=0 MISTRAL_CUDA_PDL=0 MISTRAL_CUDA_GEMV_PRELOAD=default"
    "MISTRAL_CUDA_FUSED_NORM=1 MISTRAL_CUDA_DECODE_ROPE=0 MISTRAL_CUDA_DECODE_FAST_TILES=0 MISTRAL_CUDA_PDL=0 MISTRAL_CUDA_GEMV_PRELOAD=default"
    "MISTRAL_CUDA_FUSED_NORM=1 MISTRAL_CUDA_DECODE_ROPE=1 MISTRAL_CUDA_DECODE_FAST_TILES=0 MISTRAL_CUDA_PDL=0 MISTRAL_CUDA_GEMV_PRELOAD=default"
    "MISTRAL_CUDA_FUSED_NORM=1 MISTRAL_CUDA_DECODE_ROPE=1 MISTRAL_CUDA_DECODE_FAST_TILES=1 MISTRAL_CUDA_PDL=0 MISTRAL_CUDA_GEMV_PRELOAD=default"
    "MISTRAL_CUDA_FUSED_NORM=1 MISTRAL_CUDA_DECODE_ROPE=1 MISTRAL_CUDA_DECODE_FAST_TILES=1 MISTRAL_CUDA_PDL=1 MISTRAL_CUDA_GEMV_PRELOAD=auto"
    "MISTRAL_CUDA_FUSED_NORM=1 MISTRAL_CUDA_DECODE_ROPE=1 MISTRAL_CUDA_DECODE_FAST_TILES=1 MISTRAL_CUDA_PDL=1 MISTRAL_CUDA_GEMV_PRELOAD=0")
  : >"$OUTDIR/fused_ladder.txt"
  for i in "${!LADDER_ENV[@]}"; do
    if [ "${FUSED_LADDER:-1}" = 0 ] && [ "$i" -ne 0 ] && [ "$i" -lt 4 ]; then continue; fi
    # shellcheck disable=SC2086
    env ${LADDER_ENV[$i]} timeout 120 "$BIN/mistral-run" bench $KM --device cuda --skip-bandwidth --json --reps 3 \
      --prompt-tokens 128 --gen-tokens 64 >"$OUTDIR/fused_$i.json" || echo "bench (ladder step $i) failed"
    echo "$i ${LADDER_ENV[$i]}" >>"$OUTDIR/fused_ladder.txt"
  done
  for path in half i8; do
    if [ $path = half ]; then env_on="MISTRAL_CUDA_QUANT_HALF=1 MISTRAL_CUDA_QUANT_I8=0"; else
      env_on="MISTRAL_CUDA_QUANT_HALF=0 MISTRAL_CUDA_QUANT_I8=1"; fi
    env MISTRAL_CUDA_FUSED_NORM=1 MISTRAL_CUDA_DECODE_ROPE=1 $env_on timeout 150 "$BIN/mistral-run" bench $SYN7B \
      --device cuda --skip-bandwidth --json --quant-list "${QUANT_LIST:-int8,int4}" --reps 3 --prompt-tokens 128 \
      --gen-tokens 64 >"$OUTDIR/quant_fused_$path.jsonl" || echo "bench --quant-list (fused, $path path) failed"
  done
  python3 - "$OUTDIR" <<'PY' | tee -a "$SUMMARY"
import json, os, sys
d = sys.argv[1]
base = None
for line in open(os.path.join(d, "fused_ladder.txt")):
    i, env = line.rstrip("\n").split(" ", 1)
    try:
        tok = json.load(open(os.path.join(d, f"fused_{i}.json")))["decode_tok_s"]
    except Exception:
        print(f"fused: fp16 decode ctx 128, step {i}: no result ({env})")
        continue
    if base is None:
        base = tok
    print(f"fused: fp16 decode ctx 128, step {i}: {tok:7.1f} tok/s = {tok / base:.3f}x of the first  ({env})")
PY
  quant_lines "$OUTDIR/quant_fused_half.jsonl" "fused (both folds + fp16 path; the fp16 baseline folded too)"
  quant_lines "$OUTDIR/quant_fused_i8.jsonl" "fused (both folds + int8 path; the fp16 baseline folded too)"
  ;;
knockout)
  # Where a decode step's time goes, without a profiler that sees inside graphs: decode at 128 tokens of
  # context with each group of single-token ops left out (MISTRAL_CUDA_KNOCKOUT, cuda_backend.cpp; the
  # outputs are then wrong, the timing is what counts), against all of them run. The difference is what
  # the group costs in the real step, its launches and waits included. KNOCK_QUANT=int4 (or int8) adds the
  # same for that format. On the bench phase's checkpoint when there is one, else the synthetic 7B shape.
  step "knockout: what each group of decode ops costs inside the step"
  if [ $HAVE_GPU != 1 ]; then note "knockout: skipped (no GPU)"; continue; fi
  CK=${CKPT_DIR:-/tmp/mistral7b-random}
  if [ -d "$CK" ]; then KM="-m $CK"; else KM="$SYN7B"; fi
  for q in none ${KNOCK_QUANT:-}; do
    for ko in all norm rope attn gemv norm,rope,attn; do
      env $([ $ko != all ] && echo MISTRAL_CUDA_KNOCKOUT=$ko) timeout 120 "$BIN/mistral-run" bench $KM --device cuda \
        --skip-bandwidth --json --quant $q --reps 3 --prompt-tokens 128 --gen-tokens 64 \
        >"$OUTDIR/knock_${q}_${ko}.json" 2>"$OUTDIR/knock_${q}_${ko}.err" || echo "bench ($q, knockout $ko) failed"
    done
  done
  python3 - "$OUTDIR" ${KNOCK_QUANT:-} <<'PY' | tee -a "$SUMMARY"
import json, os, sys
d = sys.argv[1]
for q in ["none"] + sys.argv[2:]:
    def ms(ko):
        try:
            return 1e3 / json.load(open(os.path.join(d, f"knock_{q}_{ko}.json")))["decode_tok_s"]
        except Exception:
            return None
    base = ms("all")
    if base is None:
        print(f"knockout ({q}): no baseline")
        continue
    print(f"knockout ({q}): decode ctx 128, everything run: {base:.3f} ms a token ({1e3 / base:.1f} tok/s)")
    for ko in ("norm", "rope", "attn", "gemv", "norm,rope,attn"):
        t = ms(ko)
        if t is None:
            print(f"  without {ko}: missing")
        else:
            print(f"  without {ko:<15} {t:.3f} ms: it costs {base - t:.3f} ms a token = {(base - t) * 1e3 / 32:.1f} us a layer")
PY
  ;;
stalls)
  # Why the decode GEMVs run below the copy rate: Nsight Compute on one gemv_bench launch each (issue
  # utilization, occupancy, DRAM throughput, stall reasons per issued instruction; tools/ncu_stalls.py).
  step "stalls: where the decode GEMVs' warps wait (ncu on gemv_bench)"
  if [ $HAVE_GPU != 1 ] || ! command -v ncu >/dev/null 2>&1 || [ ! -x "$BIN/gemv_bench" ]; then
    note "stalls: skipped (no GPU, ncu or gemv_bench)"; continue
  fi
  for spec in "int4 gate/up+swiglu" "int4 down" "int4 q/k/v" "int8 q/k/v" "f16 o" "f16 gate/up+swiglu"; do
    set -- $spec
    f="$OUTDIR/stalls_$1_$(echo "$2" | tr '/+' '--').csv"
    timeout 90 ncu --csv --page raw --print-units base -k regex:gemv --launch-skip 5 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats "$BIN/gemv_bench" --formats "$1" --warps 24 --only "$2" --reps 3 >"$f" 2>"$f.err"
    python3 tools/ncu_stalls.py "$f" "$1 $2" | tee -a "$SUMMARY"
  done
  ;;
profile)
  # Where a decode step's time goes: every kernel of about one step of the 7B shape (eager, no graph),
  # timed by Nsight Compute with the DRAM bytes it moved, summed by kernel name.
  step "profile: one 7B-shape decode step, kernel by kernel (ncu)"
  if [ $HAVE_GPU != 1 ] || ! command -v ncu >/dev/null 2>&1; then note "profile: skipped (no GPU or no ncu)"; continue; fi
  timeout 240 ncu --clock-control none --print-units base --csv --launch-skip 2000 --launch-count 430 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    "$BIN/mistral-run" bench $SYN7B --device cuda --skip-bandwidth --no-graph --prompt-tokens 16 --gen-tokens 16 \
    --reps 1 >"$OUTDIR/ncu.csv" 2>"$OUTDIR/ncu.err"
  echo "ncu exit $?"
  echo "decode step:" | tee -a "$SUMMARY"
  python3 tools/ncu_summary.py "$OUTDIR/ncu.csv" | tee -a "$SUMMARY"
  # And a whole 2048-token prefill (one chunk): GEMMs, attention and the rest (PROFILE_PREFILL=0 skips it).
  [ "${PROFILE_PREFILL:-1}" = 0 ] || timeout 240 ncu --clock-control none --print-units base --csv --launch-count 900 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    "$BIN/mistral-run" bench $SYN7B --device cuda --skip-bandwidth --prompt-tokens 2048 --chunk 2048 \
    --gen-tokens 1 --reps 1 >"$OUTDIR/ncu_prefill.csv" 2>"$OUTDIR/ncu_prefill.err"
  if [ "${PROFILE_PREFILL:-1}" != 0 ]; then
    echo "prefill of 2048 tokens:" | tee -a "$SUMMARY"
    python3 tools/ncu_summary.py "$OUTDIR/ncu_prefill.csv" | tee -a "$SUMMARY"
  fi
  # PROFILE_QUANT=int4 (or int8, nf4): one decode step of that format too. bench --quant runs the fp16
  # baseline first (a 16-token prefill and 16 eager steps, ~5,200 launches), then the quantized model's
  # prefill (~750): skipping 6,500 lands in its decode steps (the kernel names show which).
  if [ -n "${PROFILE_QUANT:-}" ]; then
    timeout 240 ncu --clock-control none --print-units base --csv --launch-skip 6500 --launch-count 430 \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      "$BIN/mistral-run" bench $SYN7B --quant "$PROFILE_QUANT" --device cuda --skip-bandwidth --no-graph \
      --prompt-tokens 16 --gen-tokens 16 --reps 1 >"$OUTDIR/ncu_quant.csv" 2>"$OUTDIR/ncu_quant.err"
    echo "ncu exit $?"
    echo "decode step, $PROFILE_QUANT weights:" | tee -a "$SUMMARY"
    python3 tools/ncu_summary.py "$OUTDIR/ncu_quant.csv" | tee -a "$SUMMARY"
  fi
  ;;
*) echo "unknown phase $phase (tests, sanitize, bench, batch, quant, pdl, kernels, attn, half, fused, knockout, stalls, profile)";;
esac; done

step "summary"
cat "$SUMMARY"
echo "full log: $LOG"
