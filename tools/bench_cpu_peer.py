#!/usr/bin/env python3
"""CPU peer for `mistral-run bench -m FILE.gguf`: transformers on the same GGUF (dequantized to float32,
as mistral-run loads it), same thread count, timing prefill of P tokens and greedy decode of N tokens
with the KV cache, the way `bench` reports them. Prints one JSON object.

    tools/bench_cpu_peer.py models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
"""
import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        sys.exit(f"bench_cpu_peer: {e} (pip install transformers torch gguf)")
    torch.set_num_threads(a.threads)
    d, name = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (1, a.prompt_tokens), generator=g)
    pre, dec = [], []
    with torch.no_grad():
        for _ in range(a.reps + 1):  # the first repetition warms up
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            t1 = time.perf_counter()
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t2 = time.perf_counter()
            for _ in range(a.gen_tokens):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t3 = time.perf_counter()
            pre.append(a.prompt_tokens / (t1 - t0))
            dec.append(a.gen_tokens / (t3 - t2))
    r = {"engine": f"transformers {transformers.__version__} (torch {torch.__version__}, float32, eager)",
         "threads": a.threads, "prefill_tok_s": statistics.median(pre[1:]),
         "decode_tok_s": statistics.median(dec[1:])}
    print(json.dumps(r))


if __name__ == "__main__":
    main()
