#!/usr/bin/env python3
"""Writes small seed files for fuzz_gguf into fuzz/seeds/gguf: a tiny llama model with every tensor type
we read (F32, F16, BF16, Q8_0, Q4_0, Q4_1) and metadata of every value type. Needs `pip install gguf numpy`."""
import os
import numpy as np
import gguf

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "gguf")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)


def model(path, qtype):
    w = gguf.GGUFWriter(path, "llama")
    D, F, H, KV, V = 32, 64, 2, 1, 8
    w.add_block_count(1)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_context_length(128)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(V)])
    w.add_token_scores([float(-i) for i in range(V)])
    w.add_token_types([1] * V)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{{ '<|im_start|>' }}{{ '<|im_end|>' }}")
    w.add_uint8("x.u8", 7)
    w.add_int16("x.i16", -3)
    w.add_int64("x.i64", -5)
    w.add_float64("x.f64", 0.5)
    w.add_bool("x.bool", True)
    w.add_array("x.nested", [[1, 2], [3]])

    def t(name, shape, q):
        x = rng.standard_normal(shape).astype(np.float32)
        if q in (gguf.GGMLQuantizationType.F32,):
            w.add_tensor(name, x)
        elif q == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, q), raw_dtype=q)

    t("token_embd.weight", (V, D), qtype)
    t("blk.0.attn_norm.weight", (D,), gguf.GGMLQuantizationType.F32)
    t("blk.0.ffn_norm.weight", (D,), gguf.GGMLQuantizationType.F32)
    for n, shape in [("attn_q", (H * 16, D)), ("attn_k", (KV * 16, D)), ("attn_v", (KV * 16, D)),
                     ("attn_output", (D, H * 16)), ("ffn_gate", (F, D)), ("ffn_up", (F, D)), ("ffn_down", (D, F))]:
        t(f"blk.0.{n}.weight", shape, qtype)
    t("output_norm.weight", (D,), gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


for q in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]:
    model(os.path.join(out, f"tiny_{q.lower()}.gguf"), gguf.GGMLQuantizationType[q])
print(out, sorted(os.listdir(out)))
