#!/usr/bin/env python3
"""Generate small random-weight Mistral fixtures and reference outputs.

Usage:  python3 tools/gen_fixtures.py

For every fixture this writes models/fixtures/<name>/ with either
  - HF layout:     config.json + model.safetensors, or
  - native layout: params.json + consolidated.safetensors,
plus reference.json holding transformers' float32 logits for a 40-token random
sequence and 40 greedily generated ids for a 5-token random prompt.

The weights are random (fixed seeds); nothing is downloaded.  Every fixture is
cross-checked against an independent float64 numpy implementation of the
Mistral forward pass (and, for the native fixture, an interleaved-RoPE pass
run directly on the native weights).  The script is deterministic: rerunning it
with the same library versions rewrites byte-identical files.

Needs: torch (CPU), transformers, safetensors, numpy.
"""

import copy
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file as np_save_file
from safetensors import safe_open
from transformers import MistralConfig, MistralForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "models", "fixtures")

SEQ_LEN = 40        # tokens for the logits reference
PROMPT_LEN = 5      # greedy prompt length
GEN_STEPS = 40      # greedy new tokens
RTOL, ATOL = 1e-4, 1e-5
MIN_MARGIN = 0.01   # minimum top-1 vs top-2 logit gap along the greedy path
MIN_DISTINCT = 10   # greedy output must not collapse into one repeated token

COMMON = dict(
    num_hidden_layers=2,
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    rms_norm_eps=1e-5,
    max_position_embeddings=32768,
)

FIXTURES = [
    dict(name="w8_gqa1_f32", layout="hf", dtype="float32", seed=1001,
         heads=4, kv_heads=4, head_dim=16, window=8, theta=10000.0, tied=False),
    dict(name="full_gqa2_tied_f32", layout="hf", dtype="float32", seed=1002,
         heads=4, kv_heads=2, head_dim=16, window=None, theta=1e6, tied=True),
    dict(name="w16_gqa4_hd12_f32", layout="hf", dtype="float32", seed=1003,
         heads=8, kv_heads=2, head_dim=12, window=16, theta=10000.0, tied=False),
    dict(name="w8_gqa2_bf16", layout="hf", dtype="bfloat16", seed=1004,
         heads=4, kv_heads=2, head_dim=16, window=8, theta=10000.0, tied=False),
    dict(name="native_w8_gqa2_f32", layout="native", dtype="float32", seed=1005,
         heads=4, kv_heads=2, head_dim=16, window=8, theta=10000.0, tied=False),
]


# --------------------------------------------------------------------------
# Config / weights
# --------------------------------------------------------------------------

def make_config(fx):
    kw = dict(COMMON)
    kw.update(
        num_attention_heads=fx["heads"],
        num_key_value_heads=fx["kv_heads"],
        head_dim=fx["head_dim"],
        sliding_window=fx["window"],
        tie_word_embeddings=fx["tied"],
        hidden_act="silu",
        architectures=["MistralForCausalLM"],
        attn_implementation="eager",
    )
    # transformers >= 5 keeps rope_theta inside rope_parameters; older
    # versions take a top-level rope_theta.  Both accept the keyword below.
    kw["rope_theta"] = fx["theta"]
    cfg = MistralConfig(**kw)
    cfg._attn_implementation = "eager"
    if hasattr(cfg, "dtype"):
        cfg.dtype = fx["dtype"]
    else:  # older transformers
        cfg.torch_dtype = fx["dtype"]
    return cfg


def make_weights(fx):
    """Random HF-named float32 weights (numpy), fixed seed."""
    rng = np.random.default_rng(fx["seed"])
    D, F, V = COMMON["hidden_size"], COMMON["intermediate_size"], COMMON["vocab_size"]
    H, KV, hd = fx["heads"], fx["kv_heads"], fx["head_dim"]

    def randn(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_w(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": randn((V, D), 0.3)}
    for l in range(COMMON["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm_w(D)
        w[p + "self_attn.q_proj.weight"] = randn((H * hd, D), 0.15)
        w[p + "self_attn.k_proj.weight"] = randn((KV * hd, D), 0.15)
        w[p + "self_attn.v_proj.weight"] = randn((KV * hd, D), 0.2)
        w[p + "self_attn.o_proj.weight"] = randn((D, H * hd), 0.15)
        w[p + "post_attention_layernorm.weight"] = norm_w(D)
        w[p + "mlp.gate_proj.weight"] = randn((F, D), 0.15)
        w[p + "mlp.up_proj.weight"] = randn((F, D), 0.15)
        w[p + "mlp.down_proj.weight"] = randn((D, F), 0.15)
    w["model.norm.weight"] = norm_w(D)
    if not fx["tied"]:
        w["lm_head.weight"] = randn((V, D), 0.2)
    return w


def build_model(fx):
    torch.manual_seed(0)  # only affects the (overwritten) default init
    cfg = make_config(fx)
    model = MistralForCausalLM(cfg).float().eval()
    sd = {k: torch.from_numpy(v.copy()) for k, v in make_weights(fx).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (fx["tied"] and k == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if fx["tied"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if fx["dtype"] == "bfloat16":
        # Round the weights to bf16 once; reference logits use exactly these
        # values in fp32.  Only parameters are rounded: model.to(bfloat16)
        # would also round the RoPE inv_freq buffer, which is not part of the
        # checkpoint (it is recomputed in fp32 when a checkpoint is loaded).
        with torch.no_grad():
            for prm in model.parameters():
                prm.copy_(prm.to(torch.bfloat16).float())
    model.config._attn_implementation = "eager"
    return model


def hf_state_numpy(model, tied):
    """float64 copies of the model's (possibly bf16-rounded) weights."""
    sd = {k: v.detach().float().numpy().astype(np.float64)
          for k, v in model.state_dict().items()}
    if tied:
        sd.pop("lm_head.weight", None)
    return sd


# --------------------------------------------------------------------------
# Native <-> HF q/k permutation
# --------------------------------------------------------------------------

def permute_native_to_hf(w, n_heads):
    """Transformers' convert script: interleaved pairs -> rotate-half."""
    rows, dim = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, dim).transpose(0, 2, 1, 3).reshape(rows, dim)


def permute_hf_to_native(w, n_heads):
    """Inverse of permute_native_to_hf."""
    rows, dim = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, dim).transpose(0, 2, 1, 3).reshape(rows, dim)


def check_permutation_against_torch():
    # Cross-check the numpy permute against the exact torch expression used by
    # transformers' convert_mistral_weights_to_hf.py, and the round trip.
    rng = np.random.default_rng(7)
    for n_heads, hd, dim in [(4, 16, 64), (2, 16, 64), (8, 12, 64)]:
        w = rng.standard_normal((n_heads * hd, dim)).astype(np.float32)
        t = torch.from_numpy(w.copy())
        ref = t.view(n_heads, hd // 2, 2, dim).transpose(1, 2).reshape(n_heads * hd, dim).numpy()
        assert np.array_equal(permute_native_to_hf(w, n_heads), ref)
        assert np.array_equal(permute_native_to_hf(permute_hf_to_native(w, n_heads), n_heads), w)
        assert np.array_equal(permute_hf_to_native(permute_native_to_hf(w, n_heads), n_heads), w)


def hf_to_native(sd, fx):
    H, KV = fx["heads"], fx["kv_heads"]
    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"]}
    for l in range(COMMON["num_hidden_layers"]):
        p, q = f"model.layers.{l}.", f"layers.{l}."
        wq = sd[p + "self_attn.q_proj.weight"]
        wk = sd[p + "self_attn.k_proj.weight"]
        nq = permute_hf_to_native(wq, H)
        nk = permute_hf_to_native(wk, KV)
        assert np.array_equal(permute_native_to_hf(nq, H), wq)
        assert np.array_equal(permute_native_to_hf(nk, KV), wk)
        out[q + "attention.wq.weight"] = nq
        out[q + "attention.wk.weight"] = nk
        out[q + "attention.wv.weight"] = sd[p + "self_attn.v_proj.weight"]
        out[q + "attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[q + "feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[q + "feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        out[q + "feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        out[q + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    out["norm.weight"] = sd["model.norm.weight"]
    out["output.weight"] = sd["lm_head.weight"]
    return out


# --------------------------------------------------------------------------
# Independent float64 numpy reference
# --------------------------------------------------------------------------

def np_rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def np_inv_freq(hd, theta):
    return 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))  # [hd/2]


def np_rope_half(x, theta):
    """Rotate-half RoPE (HF layout): pairs (i, i + hd/2). x: [T, n, hd]."""
    T, _, hd = x.shape
    ang = np.arange(T, dtype=np.float64)[:, None] * np_inv_freq(hd, theta)[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def np_rope_interleaved(x, theta):
    """Interleaved RoPE (native layout): pairs (2i, 2i+1). x: [T, n, hd]."""
    T, _, hd = x.shape
    ang = np.arange(T, dtype=np.float64)[:, None] * np_inv_freq(hd, theta)[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = b * c + a * s
    return out


def np_attention_mask(T, window):
    """allowed[i, j]: causal, plus i - W < j <= i (exactly W keys incl. itself)."""
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    return allowed


def np_forward(ids, w, p, rope, window):
    """Mistral forward in float64.

    w: generic names {emb, layers: [dict(wq, wk, wv, wo, w1, w2, w3, an, fn)], norm, out}
    p: dict(heads, kv_heads, head_dim, eps, theta)
    """
    H, KV, hd, eps = p["heads"], p["kv_heads"], p["head_dim"], p["eps"]
    group = H // KV
    T = len(ids)
    x = w["emb"][np.asarray(ids)]
    allowed = np_attention_mask(T, window)
    for L in w["layers"]:
        h = np_rmsnorm(x, L["an"], eps)
        q = (h @ L["wq"].T).reshape(T, H, hd)
        k = (h @ L["wk"].T).reshape(T, KV, hd)
        v = (h @ L["wv"].T).reshape(T, KV, hd)
        q, k = rope(q, p["theta"]), rope(k, p["theta"])
        att = np.empty((T, H, hd))
        for hh in range(H):
            kv = hh // group
            s = (q[:, hh, :] @ k[:, kv, :].T) / np.sqrt(hd)
            s = np.where(allowed, s, -np.inf)
            s = s - s.max(axis=1, keepdims=True)
            e = np.exp(s)
            a = e / e.sum(axis=1, keepdims=True)
            att[:, hh, :] = a @ v[:, kv, :]
        x = x + att.reshape(T, H * hd) @ L["wo"].T
        h = np_rmsnorm(x, L["fn"], eps)
        g = h @ L["w1"].T
        u = h @ L["w3"].T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ L["w2"].T
    x = np_rmsnorm(x, w["norm"], eps)
    return x @ w["out"].T


def generic_from_hf(sd, tied):
    layers = []
    for l in range(COMMON["num_hidden_layers"]):
        p = f"model.layers.{l}."
        layers.append(dict(
            wq=sd[p + "self_attn.q_proj.weight"], wk=sd[p + "self_attn.k_proj.weight"],
            wv=sd[p + "self_attn.v_proj.weight"], wo=sd[p + "self_attn.o_proj.weight"],
            w1=sd[p + "mlp.gate_proj.weight"], w3=sd[p + "mlp.up_proj.weight"],
            w2=sd[p + "mlp.down_proj.weight"],
            an=sd[p + "input_layernorm.weight"], fn=sd[p + "post_attention_layernorm.weight"]))
    emb = sd["model.embed_tokens.weight"]
    return dict(emb=emb, layers=layers, norm=sd["model.norm.weight"],
                out=emb if tied else sd["lm_head.weight"])


def generic_from_native(nat):
    nat = {k: np.asarray(v, dtype=np.float64) for k, v in nat.items()}
    layers = []
    for l in range(COMMON["num_hidden_layers"]):
        p = f"layers.{l}."
        layers.append(dict(
            wq=nat[p + "attention.wq.weight"], wk=nat[p + "attention.wk.weight"],
            wv=nat[p + "attention.wv.weight"], wo=nat[p + "attention.wo.weight"],
            w1=nat[p + "feed_forward.w1.weight"], w3=nat[p + "feed_forward.w3.weight"],
            w2=nat[p + "feed_forward.w2.weight"],
            an=nat[p + "attention_norm.weight"], fn=nat[p + "ffn_norm.weight"]))
    return dict(emb=nat["tok_embeddings.weight"], layers=layers,
                norm=nat["norm.weight"], out=nat["output.weight"])


# --------------------------------------------------------------------------
# transformers reference
# --------------------------------------------------------------------------

@torch.no_grad()
def hf_logits(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    lg = out.logits[0]
    assert lg.dtype == torch.float32
    return lg.numpy().copy()


def greedy(logits_fn, prompt, steps):
    """Greedy decoding by full forward passes (no KV cache)."""
    seq = list(prompt)
    new, margins = [], []
    for _ in range(steps):
        last = np.asarray(logits_fn(seq)[-1], dtype=np.float64)
        nxt = int(np.argmax(last))
        top2 = np.sort(last)[-2:]
        margins.append(float(top2[1] - top2[0]))
        new.append(nxt)
        seq.append(nxt)
    return new, margins


def f32_json(x):
    """Shortest decimal that round-trips the float32 value (as a Python float)."""
    return float(str(np.float32(x)))


def describe_mask_mismatch(ids, gw, p, window, tf_logits):
    """On disagreement, find which sliding-window rule transformers follows."""
    lines = []
    cands = [("i-W < j <= i (expected)", window), ("i-W-1 < j <= i (W+1 keys)", window + 1),
             ("i-W+1 < j <= i (W-1 keys)", window - 1), ("no window (plain causal)", None)]
    for label, w in cands:
        ref = np_forward(ids, gw, p, np_rope_half, w)
        ok = np.allclose(tf_logits, ref, rtol=RTOL, atol=ATOL)
        bad = [t for t in range(len(ids))
               if not np.allclose(tf_logits[t], ref[t], rtol=RTOL, atol=ATOL)]
        lines.append(f"  rule {label}: match={ok}, first mismatching positions={bad[:5]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def write_json(path, obj, compact=False):
    with open(path, "w") as f:
        if compact:
            json.dump(obj, f, separators=(",", ":"))
        else:
            json.dump(obj, f, indent=2)
        f.write("\n")


def gen_fixture(fx):
    name = fx["name"]
    d = os.path.join(OUT_DIR, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)

    model = build_model(fx)
    sd = hf_state_numpy(model, fx["tied"])
    gw = generic_from_hf(sd, fx["tied"])
    p = dict(heads=fx["heads"], kv_heads=fx["kv_heads"], head_dim=fx["head_dim"],
             eps=COMMON["rms_norm_eps"], theta=fx["theta"])

    rng = np.random.default_rng(fx["seed"] + 500)
    V = COMMON["vocab_size"]
    input_ids = [int(t) for t in rng.integers(0, V, size=SEQ_LEN)]

    # --- transformers logits, numpy cross-check
    tf = hf_logits(model, input_ids)
    ref = np_forward(input_ids, gw, p, np_rope_half, fx["window"])
    if not np.allclose(tf, ref, rtol=RTOL, atol=ATOL):
        msg = f"[{name}] transformers logits disagree with numpy float64 reference " \
              f"(max abs diff {np.abs(tf - ref).max():.3e})"
        if fx["window"] is not None:
            msg += "\n" + describe_mask_mismatch(input_ids, gw, p, fx["window"], tf)
        sys.exit("STOP: " + msg)
    # Sanity: the window must actually change the result at SEQ_LEN.
    if fx["window"] is not None:
        nowin = np_forward(input_ids, gw, p, np_rope_half, None)
        assert not np.allclose(tf, nowin, rtol=RTOL, atol=ATOL), "window has no effect?"
    max_diff = float(np.abs(tf - ref).max())

    # --- greedy, transformers vs numpy.  Random weights can produce near-ties;
    # deterministically try prompts until every step's top-1/top-2 logit gap
    # is at least MIN_MARGIN (so an engine with small fp32 differences still
    # reproduces the ids) and the output is not one token repeated.
    for attempt in range(100):
        prng = np.random.default_rng([fx["seed"], 600, attempt])
        prompt_ids = [int(t) for t in prng.integers(0, V, size=PROMPT_LEN)]
        gen, margins = greedy(lambda s: hf_logits(model, s), prompt_ids, GEN_STEPS)
        if min(margins) >= MIN_MARGIN and len(set(gen)) >= MIN_DISTINCT:
            break
    else:
        sys.exit(f"[{name}] no prompt with greedy margin >= {MIN_MARGIN} "
                 f"and >= {MIN_DISTINCT} distinct generated ids")
    gen_np, _ = greedy(lambda s: np_forward(s, gw, p, np_rope_half, fx["window"]),
                       prompt_ids, GEN_STEPS)
    assert gen == gen_np, f"[{name}] greedy ids differ between transformers and numpy"

    # --- write weights
    if fx["layout"] == "hf":
        to_save = model
        if fx["dtype"] == "bfloat16":
            to_save = copy.deepcopy(model).to(torch.bfloat16)  # exact: already bf16-rounded
        to_save.save_pretrained(d, safe_serialization=True)
        del to_save
        files = sorted(os.listdir(d))
        assert files == ["config.json", "generation_config.json", "model.safetensors"] or \
            files == ["config.json", "model.safetensors"], files
        gcfg = os.path.join(d, "generation_config.json")
        if os.path.exists(gcfg):
            os.remove(gcfg)  # not needed by the engine
        with safe_open(os.path.join(d, "model.safetensors"), "np") as f:
            keys = set(f.keys())
            dt = {str(f.get_slice(k).get_dtype()) for k in keys}
        assert ("lm_head.weight" in keys) == (not fx["tied"]), keys
        assert dt == ({"BF16"} if fx["dtype"] == "bfloat16" else {"F32"}), dt
        cfg = json.load(open(os.path.join(d, "config.json")))
        assert cfg["architectures"] == ["MistralForCausalLM"], cfg
        # Reload from disk and confirm identical logits.
        dkw = {"dtype": torch.float32} if int(transformers.__version__.split(".")[0]) >= 5 \
            else {"torch_dtype": torch.float32}
        re = MistralForCausalLM.from_pretrained(d, attn_implementation="eager", **dkw).eval()
        assert np.array_equal(hf_logits(re, input_ids), tf), f"[{name}] reload mismatch"
        extra = ""
    else:
        check_permutation_against_torch()
        nat = hf_to_native(sd, fx)
        nat32 = {k: np.ascontiguousarray(v.astype(np.float32)) for k, v in nat.items()}
        np_save_file(nat32, os.path.join(d, "consolidated.safetensors"))
        params = dict(dim=COMMON["hidden_size"], n_layers=COMMON["num_hidden_layers"],
                      head_dim=fx["head_dim"], hidden_dim=COMMON["intermediate_size"],
                      n_heads=fx["heads"], n_kv_heads=fx["kv_heads"],
                      norm_eps=COMMON["rms_norm_eps"], vocab_size=V,
                      rope_theta=fx["theta"], sliding_window=fx["window"])
        write_json(os.path.join(d, "params.json"), params)
        # Interleaved-RoPE pass directly on the native weights.
        nw = generic_from_native(nat32)
        ref_nat = np_forward(input_ids, nw, p, np_rope_interleaved, fx["window"])
        assert np.allclose(ref_nat, ref, rtol=1e-10, atol=1e-10), \
            f"[{name}] native interleaved pass != HF rotate-half pass"
        assert np.allclose(tf, ref_nat, rtol=RTOL, atol=ATOL)
        gen_nat, _ = greedy(lambda s: np_forward(s, nw, p, np_rope_interleaved, fx["window"]),
                            prompt_ids, GEN_STEPS)
        assert gen_nat == gen
        extra = f", native-vs-hf numpy max diff {np.abs(ref_nat - ref).max():.1e}"

    reference = {
        "name": name,
        "layout": fx["layout"],
        "weight_dtype": fx["dtype"],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "input_ids": input_ids,
        "logits": [[f32_json(v) for v in row] for row in tf],
        "greedy": {
            "prompt_ids": prompt_ids,
            "ids": gen,
            "min_top2_margin": round(min(margins), 6),
        },
    }
    write_json(os.path.join(d, "reference.json"), reference, compact=True)
    # Confirm the written logits round-trip to the exact float32 values.
    back = np.array(json.load(open(os.path.join(d, "reference.json")))["logits"], dtype=np.float32)
    assert np.array_equal(back, tf.astype(np.float32))

    print(f"{name:22s} {fx['layout']:6s} {fx['dtype']:8s} numpy-check OK "
          f"(max |tf-np64| {max_diff:.1e}{extra}); greedy min margin {min(margins):.4f}; "
          f"logit std {tf.std():.2f}; prompt attempt {attempt}")


def main():
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"numpy {np.__version__}")
    for fx in FIXTURES:
        gen_fixture(fx)
    total = 0
    for dp, _, fs in os.walk(OUT_DIR):
        for f in fs:
            total += os.path.getsize(os.path.join(dp, f))
    print(f"wrote {len(FIXTURES)} fixtures to {os.path.relpath(OUT_DIR, ROOT)} "
          f"({total / 1024:.0f} KiB total)")


if __name__ == "__main__":
    main()
