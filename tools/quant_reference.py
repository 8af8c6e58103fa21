#!/usr/bin/env python3
"""Independent numpy emulation of mistral-run's weight quantization, for cross-checking the engine.

Writes a copy of a Hugging Face model directory (single model.safetensors) whose linear weights
(q/k/v/o, gate/up/down) are quantized and dequantized back to float32 the way include/mistral/quant.h
describes, written from that description (not from the C++ code):
  int8  one scale per output row, absmax / 127, round half away from zero, clamp to [-127, 127]
  nf4   bitsandbytes' NF4 code book, blocks of 64 along each row, absmax rounded to fp16, nearest code
        (nf4-f32 keeps the absmax in fp32 as bitsandbytes does)
  int4  groups of 128 along each row, scale = (element of largest magnitude) / -8 rounded to fp16,
        q = clamp(round(w / scale), -8, 7)
Running `mistral-run perplexity` on the result (no --quant) must give the perplexity of
`mistral-run perplexity --quant MODE` on the original, up to float32 rounding of the matmuls.

usage: tools/quant_reference.py SRC_DIR DST_DIR int8|nf4|nf4-f32|int4   (needs numpy, safetensors)
"""
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

# bitsandbytes-foundation/bitsandbytes, csrc/kernels.cu, dDequantizeNF4
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def round_away(x):
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def fake_quant(w, mode):
    w = w.astype(np.float32)
    rows, cols = w.shape
    if mode == "int8":
        s = np.abs(w).max(axis=1, keepdims=True) / np.float32(127)
        q = np.clip(round_away(np.where(s > 0, w / np.where(s > 0, s, 1), 0)), -127, 127)
        return (q * s).astype(np.float32)
    out = np.zeros_like(w)
    group = 128 if mode == "int4" else 64
    for g0 in range(0, cols, group):
        blk = w[:, g0:g0 + group]
        if mode.startswith("nf4"):
            amax = np.abs(blk).max(axis=1, keepdims=True)
            if mode == "nf4":
                amax = amax.astype(np.float16).astype(np.float32)
            xn = np.where(amax > 0, blk / np.where(amax > 0, amax, 1), 0)
            idx = np.abs(xn[..., None] - NF4[None, None, :]).argmin(axis=-1)
            out[:, g0:g0 + group] = NF4[idx] * amax
        else:
            m = blk[np.arange(rows), np.abs(blk).argmax(axis=1)][:, None]
            s = (m / np.float32(-8)).astype(np.float16).astype(np.float32)
            q = np.clip(round_away(np.where(s != 0, blk / np.where(s != 0, s, 1), 0)), -8, 7)
            out[:, g0:g0 + group] = q * s
    return out


def main():
    if len(sys.argv) != 4 or sys.argv[3] not in ("int8", "nf4", "nf4-f32", "int4"):
        sys.exit(__doc__)
    src, dst, mode = sys.argv[1:]
    tensors = load_file(os.path.join(src, "model.safetensors"))
    out = {n: (fake_quant(w, mode) if w.ndim == 2 and any(k in n for k in LINEAR) else w) for n, w in tensors.items()}
    os.makedirs(dst, exist_ok=True)
    save_file(out, os.path.join(dst, "model.safetensors"))
    for f in os.listdir(src):
        if f != "model.safetensors" and os.path.isfile(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))


if __name__ == "__main__":
    main()
