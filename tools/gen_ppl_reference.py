#!/usr/bin/env python3
"""Reference perplexity of a text under a GGUF model, from transformers loading the same file.

transformers reads the GGUF (gguf_file=..., tensors dequantized to float32) and its tokenizer from the
GGUF metadata; the text is scored with the strided-window recipe `mistral-run perplexity` uses: windows
of CTX tokens starting every STRIDE tokens, each window's logits scoring only the tokens that no earlier
window scored (the first token is never scored). The output records the ids, every scored token's
negative log-likelihood and the mean, so tests/test_gguf.cpp can check our tokenization and our
evaluator on a real model.

    pip install transformers torch gguf
    tools/gen_ppl_reference.py models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        tests/data/perplexity/plain_english.txt tests/data/perplexity/smollm2_plain_english.json

The text must have no digits (see tools/gen_gguf_reference.py: transformers' GGUF tokenizer for SmolLM2
does not split digits as the model's own tokenizer does).
"""
import argparse
import hashlib
import json
import math
import os
import sys


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--stride", type=int, default=0, help="default: ctx / 2")
    a = ap.parse_args()
    stride = a.stride or max(1, a.ctx // 2)
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        sys.exit(f"gen_ppl_reference: {e} (pip install transformers torch gguf)")
    text = open(a.text, encoding="utf-8").read()
    if any(ch.isdigit() for ch in text):
        sys.exit("gen_ppl_reference: the text must not contain digits (see the docstring)")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    d, name = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    ids = tok(text)["input_ids"]
    n = len(ids)
    nll = []
    prev_end = 0
    begin = 0
    with torch.no_grad():
        while begin < n:
            end = min(begin + a.ctx, n)
            first = max(prev_end, begin + 1)
            logits = model(input_ids=torch.tensor([ids[begin:end]])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            for j in range(first - 1, end - 1):  # position j predicts token j + 1
                nll.append(-float(logp[j - begin, ids[j + 1]]))
            prev_end = end
            if end == n:
                break
            begin += stride
    mean = sum(nll) / len(nll)
    ref = {
        "gguf": os.path.basename(a.gguf),
        "gguf_sha256": sha256(a.gguf),
        "text": os.path.basename(a.text),
        "text_sha256": sha256(a.text),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32",
        "ctx": a.ctx,
        "stride": stride,
        "ids": ids,
        "nll": [round(x, 6) for x in nll],
        "mean_nll": mean,
        "perplexity": math.exp(mean),
    }
    print(f"{n} tokens, {len(nll)} scored, perplexity {math.exp(mean):.4f}", file=sys.stderr)
    with open(a.out, "w") as f:
        json.dump(ref, f, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
