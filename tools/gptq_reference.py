#!/usr/bin/env python3
"""Independent torch implementation of GPTQ as mistral-run applies it (include/mistral/gptq.h), for
cross-checking the engine. Written from the GPTQ paper (Frantar et al. 2022) and the header, not from
the C++ code.

Calibration: the text's token ids (BOS first, at most --tokens), split into windows of --ctx tokens, each
run through the transformers model in float32; H = sum x x^T of every linear layer's input. Per weight:
columns no input reached get H_kk = 1; damping 0.01 * mean(diag H); act-order (columns by decreasing
diag H, stable); U = upper Cholesky factor of the permuted H^-1; every group's scale fixed up front from
the stored weight by the round-to-nearest rule (tools/quant_reference.py); then column by column:
quantize, divide the error by U[k, k], subtract it times U[k, k+1:] from the columns not yet done.
Writes a copy of the model directory whose linear weights are the dequantized GPTQ weights (float32):
`mistral-run perplexity` on it must match `mistral-run perplexity --quant MODE --calib TEXT` on the
original, up to float rounding.

usage: tools/gptq_reference.py SRC_DIR CALIB_TEXT DST_DIR int8|nf4|int4 [--ctx 512] [--tokens 8192]
(needs torch, transformers, safetensors, numpy)
"""
import argparse
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_reference import NF4  # noqa: E402

NF4_T = torch.tensor(NF4, dtype=torch.float32)
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def f16(x):
    return x.to(torch.float16).to(torch.float32)


def round_away(x):
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def group_scale(blk, mode):  # blk [rows, g] -> [rows]
    if mode == "int8":
        return blk.abs().amax(1) / 127
    if mode == "nf4":
        return f16(blk.abs().amax(1))
    m = blk[torch.arange(blk.shape[0]), blk.abs().argmax(1)]
    return f16(m / -8)


def quantize_col(w, s, mode):  # w, s [rows] -> dequantized values
    safe = torch.where(s != 0, s, torch.ones_like(s))
    y = torch.where(s != 0, w / safe, torch.zeros_like(w))
    if mode == "int8":
        return torch.clamp(round_away(y), -127, 127) * s
    if mode == "nf4":
        return NF4_T[(y[:, None] - NF4_T[None, :]).abs().argmin(1)] * torch.where(s > 0, s, torch.zeros_like(s))
    return torch.clamp(round_away(y), -8, 7) * s


def gptq(W, H, mode, damp=0.01):
    W = W.float().clone()
    rows, K = W.shape
    G = K if mode == "int8" else (64 if mode == "nf4" else 128)
    scales = torch.stack([group_scale(W[:, g:g + G], mode) for g in range(0, K, G)], 1)  # static groups
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H += damp * torch.mean(torch.diag(H)) * torch.eye(K, dtype=H.dtype)
    order = torch.argsort(torch.diag(H), descending=True, stable=True)
    Hp = H[order][:, order]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hp)), upper=True).float()
    Wp = W[:, order].clone()
    Q = torch.zeros_like(W)
    for k in range(K):
        col = int(order[k])
        q = quantize_col(Wp[:, k], scales[:, col // G], mode)
        Q[:, col] = q
        err = (Wp[:, k] - q) / U[k, k]
        Wp[:, k + 1:] -= err[:, None] * U[k, k + 1:][None, :]
    return Q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("calib")
    ap.add_argument("dst")
    ap.add_argument("mode", choices=["int8", "nf4", "int4"])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=8192)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.src)
    model = AutoModelForCausalLM.from_pretrained(a.src, dtype=torch.float32)
    model.eval()
    ids = tok(open(a.calib, encoding="utf-8").read(), return_tensors="pt").input_ids[:, :a.tokens]
    H = {}

    def hook(name):
        def f(mod, inp):
            x = inp[0].reshape(-1, inp[0].shape[-1]).double()
            H[name] = H.get(name, 0) + x.T @ x
        return f

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in LINEAR}
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    with torch.no_grad():
        for b in range(0, ids.shape[1], a.ctx):
            model(ids[:, b:b + a.ctx])
    for h in handles:
        h.remove()
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    for n, m in linears.items():
        sd[n + ".weight"] = gptq(m.weight.data, H[n], a.mode).contiguous()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    os.makedirs(a.dst, exist_ok=True)
    save_file(sd, os.path.join(a.dst, "model.safetensors"), metadata={"format": "pt"})
    for f in os.listdir(a.src):
        if f != "model.safetensors" and os.path.isfile(os.path.join(a.src, f)):
            shutil.copy(os.path.join(a.src, f), os.path.join(a.dst, f))


if __name__ == "__main__":
    main()
