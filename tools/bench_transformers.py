#!/usr/bin/env python3
"""Reference side of tools/gpu-check.sh: makes a random-weight checkpoint of a given Mistral shape on
the GPU (default: Mistral-7B's exact shape, fp16), saves it in the Hugging Face layout (sharded
safetensors, config.json, and a byte-fallback tokenizer.json so mistral-run can read prompts), then
times transformers on it in the same process: device-to-device copy bandwidth, prefill tok/s, decode
tok/s at two context lengths, and a greedy continuation for the token-equality check.
Writes one JSON object (--json-out) and prints a short summary. Needs torch with CUDA and transformers.
"""
import argparse
import json
import os
import statistics
import time


def byte_tokenizer_json(vocab_size):
    # <unk>, <s>, </s>, then the 256 byte pieces: every text encodes through byte fallback, so the
    # ids of a prompt are [1] + [3 + b for b in ("\u2581" + text.replace(" ", "\u2581")).encode()].
    # Placeholder pieces fill the rest of the model's vocabulary, so that any generated id decodes.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    for i in range(len(vocab), vocab_size):
        vocab["<filler_%d>" % i] = i
    return {
        "version": "1.0",
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "added_tokens": [{"id": i, "content": c, "special": True} for c, i in
                         (("<unk>", 0), ("<s>", 1), ("</s>", 2))],
        "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True,
                  "vocab": vocab, "merges": []},
    }


def prompt_ids(text):
    return [1] + [3 + b for b in ("\u2581" + text.replace(" ", "\u2581")).encode()]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--prefill", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 4096])
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--greedy-steps", type=int, default=32)
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a dry run with a tiny shape")
    a = ap.parse_args()

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    dt = getattr(torch, a.dtype)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    res = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "dtype": a.dtype}

    # Copy bandwidth: bytes read + written by a 4 GiB device-to-device copy, median of 10.
    src = torch.empty((1 << 30) if cuda else (1 << 24), dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        sync()
        t = time.time()
        dst.copy_(src)
        sync()
        times.append(time.time() - t)
    res["copy_gbs"] = 2 * src.numel() * 4 / statistics.median(times) / 1e9
    del src, dst
    if cuda:  # cuBLAS bf16 GEMM rate (torch.matmul), the yardstick for prefill
        n = 8192
        ma = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
        mb = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
        for _ in range(3):
            ma @ mb
        sync()
        t = time.time()
        for _ in range(10):
            ma @ mb
        sync()
        res["gemm_bf16_tflops"] = 10 * 2 * n ** 3 / (time.time() - t) / 1e12
        del ma, mb

    cfg = MistralConfig(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                        head_dim=a.hidden // a.heads, vocab_size=a.vocab, sliding_window=a.window,
                        max_position_embeddings=32768, rope_theta=10000.0, rms_norm_eps=1e-5,
                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    t0 = time.time()
    torch.manual_seed(0)
    with torch.device(dev):
        model = MistralForCausalLM._from_config(cfg, dtype=dt, attn_implementation="sdpa")
    model.eval()
    res["init_s"] = time.time() - t0
    res["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    res["decode_bytes"] = res["weight_bytes"] - model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()

    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, max_shard_size="5GB")
    with open(os.path.join(a.out, "tokenizer.json"), "w") as f:
        json.dump(byte_tokenizer_json(a.vocab), f)
    res["save_s"] = time.time() - t0

    def timed(fn, reps=3):
        fn()
        sync()
        ts = []
        for _ in range(reps):
            t = time.time()
            fn()
            sync()
            ts.append(time.time() - t)
        return statistics.median(ts)

    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.inference_mode():
        res["prefill"] = {}
        for n in a.prefill:
            ids = torch.randint(3, a.vocab, (1, n), generator=g).to(dev)
            s = timed(lambda: model(ids, use_cache=False, logits_to_keep=1))
            res["prefill"][str(n)] = n / s
        res["decode"] = {}
        for ctx in a.contexts:
            ids = torch.randint(3, a.vocab, (1, ctx), generator=g).to(dev)
            out = model(ids, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            for _ in range(16):  # warm-up steps (the first context's first steps ran slow)
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            t = time.time()
            for _ in range(a.decode_steps):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            res["decode"][str(ctx)] = a.decode_steps / (time.time() - t)
            del past, out
        # Greedy continuation of the prompt (full-precision logits comparison is not meaningful for
        # random weights; the token ids are what must agree).
        p = prompt_ids(a.prompt)
        ids = torch.tensor([p], device=dev)
        out = model.generate(ids, max_new_tokens=a.greedy_steps, do_sample=False, eos_token_id=None,
                             pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        # Top-1 minus top-2 logit per step: random weights give flat logits, so token equality is
        # only meaningful up to the first near-tie.
        margins = [float((lambda t: t[0] - t[1])(sc[0].float().topk(2).values)) for sc in out.scores]
        res["greedy"] = {"prompt": a.prompt, "prompt_ids": p, "ids": out.sequences[0, len(p):].tolist(),
                         "margins": margins}
    with open(a.json_out, "w") as f:
        json.dump(res, f, indent=1)
    print("transformers %s on %s: copy %.0f GB/s; prefill %s tok/s; decode %s tok/s" % (
        a.dtype, res["device"], res["copy_gbs"],
        ", ".join("%s: %.0f" % kv for kv in res["prefill"].items()),
        ", ".join("ctx %s: %.1f" % kv for kv in res["decode"].items())))


if __name__ == "__main__":
    main()
