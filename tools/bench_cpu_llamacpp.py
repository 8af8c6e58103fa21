#!/usr/bin/env python3
"""CPU speed against llama.cpp in the same run: `mistral-run bench` and llama.cpp's `llama-bench` on the
same GGUF file with the same thread count, alternating, at each context depth. Prefill of P tokens, and
greedy decode of N tokens after P tokens of context (llama-bench: -p P, and -n N -d P). Prints a table
and, with --json, one object per row.

llama.cpp is not part of this project: build its llama-bench yourself and pass its path, e.g. from the
source that PyPI's llama-cpp-python carries (vendor/llama.cpp; cmake -DGGML_NATIVE=ON, target
llama-bench). mistral-run reads a GGUF's Q4_1 / Q4_0 / Q8_0 tensors by dequantizing them at load; the
options after `--` (default: --quant int4 --quant-lm-head) say what it runs them as.

    tools/bench_cpu_llamacpp.py models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --llama-bench PATH \\
        --depths 128,1024 -- --quant int4 --quant-lm-head
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def ours(binary, gguf, threads, depth, gen, extra):
    cmd = [binary, "bench", "-m", gguf, "-t", str(threads), "--prompt-tokens", str(depth), "--gen-tokens",
           str(gen), "--reps", "1", "--json", "--skip-bandwidth"] + extra
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return r["prefill_tok_s"], r["decode_tok_s"]


def theirs(binary, gguf, threads, depth, gen):
    out = []
    for args in (["-p", str(depth), "-n", "0"], ["-p", "0", "-n", str(gen), "-d", str(depth)]):
        cmd = [binary, "-m", gguf, "-t", str(threads), "-r", "1", "-o", "json"] + args
        rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        out.append(rows[0]["avg_ts"])
    return out[0], out[1]


def main():
    argv = sys.argv[1:]
    extra = ["--quant", "int4", "--quant-lm-head"]
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--llama-bench", required=True, help="path of llama.cpp's llama-bench")
    ap.add_argument("--mistral-run", default=os.path.join(os.path.dirname(__file__), "..", "build", "mistral-run"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--depths", default="128,1024", help="prompt tokens / context depths, comma-separated")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions; the median is reported")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    for p in (a.mistral_run, a.llama_bench):
        if not os.access(p, os.X_OK):
            sys.exit(f"bench_cpu_llamacpp: {p} is not an executable")
    print(f"{os.path.basename(a.gguf)}, {a.threads} threads; mistral-run {' '.join(extra)}; llama.cpp as stored",
          file=sys.stderr)
    rows = []
    for depth in (int(x) for x in a.depths.split(",")):
        m_pre, m_dec, l_pre, l_dec = [], [], [], []
        for _ in range(a.reps):  # alternate, so that a slow spell of a shared host hits both
            p, d = ours(a.mistral_run, a.gguf, a.threads, depth, a.gen_tokens, extra)
            m_pre.append(p), m_dec.append(d)
            p, d = theirs(a.llama_bench, a.gguf, a.threads, depth, a.gen_tokens)
            l_pre.append(p), l_dec.append(d)
        med = statistics.median
        rows.append({"depth": depth, "prefill": [med(m_pre), med(l_pre)], "decode": [med(m_dec), med(l_dec)]})
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return
    print("| what | mistral-run | llama.cpp | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        for k, label in (("prefill", f"prefill {r['depth']} tokens, tok/s"),
                         ("decode", f"decode {a.gen_tokens} tokens after {r['depth']}, tok/s")):
            m, l = r[k]
            print(f"| {label} | {m:.1f} | {l:.1f} | {m / l:.2f}x |")


if __name__ == "__main__":
    main()
