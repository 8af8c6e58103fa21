#!/bin/sh
# Writes tests/data/perplexity/stories260K_samples.txt: eight stories sampled from stories260K itself
# (temperature 1, default top-p 0.95, seeds 1..8, at most 400 tokens each; "Once upon a time" plus the
# completion, stories separated by a blank line). Usage: tools/gen_perplexity_text.sh [BUILD_DIR [OUT FIRST_SEED]]
# (tools/gen_calib_text.sh writes the calibration text this way, from seed 101).
set -eu
BIN="${1:-build}/mistral-run"
MODEL="$(dirname "$0")/../../shared/data/models/stories260K"
OUT="${2:-$(dirname "$0")/../tests/data/perplexity/stories260K_samples.txt}"
FIRST="${3:-1}"
: >"$OUT"
for seed in $(seq "$FIRST" $((FIRST + 7))); do
  [ "$seed" = "$FIRST" ] || printf '\n' >>"$OUT"
  printf 'Once upon a time' >>"$OUT"
  "$BIN" -m "$MODEL" -p "Once upon a time" --temp 1 --seed "$seed" -n 400 >>"$OUT"
done
