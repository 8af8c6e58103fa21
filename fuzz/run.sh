#!/usr/bin/env bash
# Runs each tokenizer fuzzer for SECONDS (default 180), one at a time, one process each, starting from
# fuzz/seeds and keeping the grown corpus and any crash files in BUILD/fuzz-corpus and BUILD/fuzz-artifacts.
# Usage: fuzz/run.sh BUILD_DIR [SECONDS] [TARGET...]   (BUILD_DIR configured with -DMISTRAL_FUZZ=ON)
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:?build directory}
SECS=${2:-180}
shift $(( $# >= 2 ? 2 : 1 ))
TARGETS=${*:-sp_model hf_json tekken_json encode}
for t in $TARGETS; do
  corpus="$BUILD/fuzz-corpus/$t"
  art="$BUILD/fuzz-artifacts/$t/"
  mkdir -p "$corpus" "$art"
  dict=()
  case $t in hf_json|tekken_json) dict=(-dict=fuzz/json.dict) ;; esac
  echo "== fuzz_$t for ${SECS}s"
  "$BUILD/fuzz/fuzz_$t" -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
    -artifact_prefix="$art" "${dict[@]}" "$corpus" "fuzz/seeds/$t" >"$BUILD/fuzz-$t.log" 2>&1
  echo "exit $?"
  grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|^(==[0-9]+==)?ERROR|SUMMARY|invariant|deadly" \
    "$BUILD/fuzz-$t.log" | head -20
  echo "corpus: $(ls "$corpus" | wc -l) files; artifacts: $(ls "$art" | wc -l)"
done
