#!/usr/bin/env python3
"""Batched greedy output against each prompt run alone, through the CLI (issue 5's equivalence check,
used by tools/gpu-check.sh for the CUDA backend; tests/test_batch_cli.cpp does the same on the CPU).

For every prompt of tests/data/batch/stories_prompts.txt: `mistral-run -m MODEL -p PROMPT --temp 0 --json`
alone, then `mistral-run batch` over the whole file at each --sizes value; the text, token counts and
finish reason of every request must be equal. Prints one summary line per batch size.

    tools/batch_equivalence.py --bin build/mistral-run --model DIR --device cpu --out /tmp/beq --sizes 1 3 8
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True, help="directory for the inputs and outputs")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 8])
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--prompts", default=os.path.join(ROOT, "tests/data/batch/stories_prompts.txt"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    prompts = [l for l in open(a.prompts, encoding="utf-8").read().split("\n") if l]
    common = ["--device", a.device, "-n", str(a.n), "--temp", "0"]
    solo = []
    for p in prompts:
        r = subprocess.run([a.bin, "-m", a.model, "-p", p, "--json"] + common, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            print(f"batch equivalence ({a.device}): one-shot run failed: {r.stderr.strip()}")
            return 1
        solo.append(json.loads(r.stdout))
    bad_total = 0
    for bs in a.sizes:
        out = os.path.join(a.out, f"out{bs}.jsonl")
        if os.path.exists(out):
            os.remove(out)
        r = subprocess.run([a.bin, "batch", "-m", a.model, "-i", a.prompts, "-o", out, "--batch-size", str(bs),
                            "--chunk", "5"] + common, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            print(f"batch equivalence ({a.device}): batch {bs} failed: {r.stderr.strip()}")
            bad_total += 1
            continue
        got = {}
        for line in open(out, encoding="utf-8"):
            j = json.loads(line)
            got[j["id"]] = j
        bad = []
        for i, s in enumerate(solo):
            g = got.get(i + 1)
            if (g is None or g.get("text") != s["text"] or g.get("completion_tokens") != len(s["ids"])
                    or g.get("prompt_tokens") != len(s["prompt_ids"]) or g.get("finish_reason") != s["finish_reason"]):
                bad.append(i + 1)
        bad_total += len(bad)
        print(f"batch equivalence ({a.device}): batch size {bs}: {len(prompts) - len(bad)}/{len(prompts)} requests "
              f"equal to one-shot" + (f"; differing ids {bad}" if bad else ""))
    return 1 if bad_total else 0


if __name__ == "__main__":
    sys.exit(main())
