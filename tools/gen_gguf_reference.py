#!/usr/bin/env python3
"""Reference greedy tokens for a GGUF model, from transformers loading the same file.

transformers reads the GGUF (gguf_file=..., tensors dequantized to float32 by the `gguf` package, q/k rows
permuted back from llama.cpp's interleaved RoPE order) and builds its tokenizer from the GGUF metadata.
For each prompt this records transformers' prompt ids and 64 greedy steps (argmax of float32 logits,
continuing past EOS), plus the margin between the two best logits at each step so a mismatch can be told
apart from a near tie. tests/test_gguf.cpp checks that mistral-run gives the same ids.

    pip install transformers torch gguf
    tools/gen_gguf_reference.py models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf tests/data/smollm2_greedy.json

Prompts contain no digits: transformers' GGUF tokenizer for SmolLM2 uses the plain GPT-2 pre-tokenizer,
while the model's own tokenizer (and llama.cpp's "smollm" pre-tokenizer, which we follow) splits digits one
by one, so prompts with digits would tokenize differently for a reason that is not ours to match.
"""
import argparse
import hashlib
import json
import os
import sys

STEPS = 64
SYSTEM = "You are a helpful assistant."
CHATS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Give me three tips for staying healthy.",
]
PLAIN = [
    "The quick brown fox",
    "Once upon a time, in a small village,",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=STEPS)
    a = ap.parse_args()
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        sys.exit(f"gen_gguf_reference: {e} (pip install transformers torch gguf)")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    d, name = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()

    cases = []
    for q in CHATS:
        conv = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        cases.append({"kind": "chat", "messages": conv, "text": text, "prompt_ids": ids})
    for p in PLAIN:
        ids = tok(p)["input_ids"]
        cases.append({"kind": "plain", "prompt": p, "text": p, "prompt_ids": ids})

    for c in cases:
        assert not any(ch.isdigit() for ch in c["text"]), "prompts must not contain digits (see the docstring)"
        ids = list(c["prompt_ids"])
        out, margins = [], []
        past = None
        cur = torch.tensor([ids])
        with torch.no_grad():
            for _ in range(a.steps):
                r = model(input_ids=cur, past_key_values=past, use_cache=True)
                past = r.past_key_values
                logits = r.logits[0, -1].float()
                top = torch.topk(logits, 2)
                nxt = int(top.indices[0])
                margins.append(round(float(top.values[0] - top.values[1]), 5))
                out.append(nxt)
                cur = torch.tensor([[nxt]])
        c["ids"] = out
        c["margins"] = margins
        c["completion"] = tok.decode(out, skip_special_tokens=False)
        print(f"{c['kind']}: {c['text']!r} -> {c['completion']!r}", file=sys.stderr)

    ref = {
        "gguf": os.path.basename(a.gguf),
        "gguf_sha256": sha256(a.gguf),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32",
        "steps": a.steps,
        "system": SYSTEM,
        "cases": cases,
    }
    with open(a.out, "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
