#!/bin/sh
# Writes the GPTQ calibration texts of tests/data/perplexity (each model's own samples, kept apart from the
# evaluation texts: other seeds and prompts). Usage: tools/gen_calib_text.sh [BUILD_DIR]
#   stories260K_calib.txt  stories260K, "Once upon a time", temperature 1, default top-p 0.95, seeds 101..108,
#                          at most 400 tokens each, stories separated by a blank line (as gen_perplexity_text.sh,
#                          whose seeds are 1..8)
#   smollm2_calib.txt      SmolLM2-135M-Instruct (tools/fetch-model smollm2): six prompts, seeds 201..206, 350
#                          tokens each, one-shot; then twenty prompts, seeds 300..319, 500 tokens each, through
#                          `batch`; every sample is its prompt followed by the completion, separated by blank lines
set -eu
BIN="${1:-build}/mistral-run"
ROOT="$(dirname "$0")/.."
DATA="$ROOT/tests/data/perplexity"
SMOL="$ROOT/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

"$(dirname "$0")/gen_perplexity_text.sh" "${1:-build}" "$DATA/stories260K_calib.txt" 101

OUT="$DATA/smollm2_calib.txt"
: >"$OUT"
i=0
for p in "The history of" "Once upon a time" "In the morning" "Scientists have found" "My favourite" "The city"; do
  i=$((i + 1))
  [ "$i" = 1 ] || printf '\n\n' >>"$OUT"
  printf '%s' "$p" >>"$OUT"
  "$BIN" -m "$SMOL" -p "$p" --temp 1 --seed $((200 + i)) -n 350 >>"$OUT"
done
TMP="$(mktemp -d)"
python3 - "$TMP/in.jsonl" <<'PY'
import json, sys
prompts = ["The history of", "Once upon a time", "In the morning", "Scientists have found", "My favourite", "The city",
           "When I was young", "The best way to", "Many people believe", "The river", "Yesterday", "A good teacher",
           "The old house", "In the village", "The first time", "Water is", "The market", "Every year", "The garden",
           "Music can"]
with open(sys.argv[1], "w") as f:
    for i, p in enumerate(prompts):
        f.write(json.dumps({"id": str(i), "prompt": p, "max_tokens": 500, "temperature": 1.0, "seed": 300 + i}) + "\n")
PY
"$BIN" batch -m "$SMOL" -i "$TMP/in.jsonl" -o "$TMP/out.jsonl" --batch-size 20
python3 - "$TMP/in.jsonl" "$TMP/out.jsonl" >>"$OUT" <<'PY'
import json, sys
prompts = {j["id"]: j["prompt"] for j in map(json.loads, open(sys.argv[1]))}
texts = {j["id"]: j["text"] for j in map(json.loads, open(sys.argv[2]))}
sys.stdout.write("\n\n" + "\n\n".join(prompts[str(i)] + texts[str(i)] for i in range(len(prompts))))
PY
rm -rf "$TMP"
