#!/usr/bin/env python3
"""Writes small seed inputs for the tokenizer fuzzers into fuzz/seeds/<target>/ (committed; rerun to
regenerate). Seeds are tiny but valid files of each format, so mutations start from the parsers' deep
paths; the real tokenizers are too large to mutate efficiently.

Usage: python3 fuzz/make_seeds.py
"""
import base64
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
ROOT = os.path.join(HERE, "..")


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wt, payload):
    key = varint(num << 3 | wt)
    if wt == 0:
        return key + varint(payload)
    if wt == 2:
        return key + varint(len(payload)) + payload
    if wt == 5:
        return key + payload
    raise ValueError(wt)


def sp_model(pieces, byte_fallback=True, dummy_prefix=True):
    """A SentencePiece ModelProto: pieces are (text, score, type)."""
    out = b""
    for text, score, typ in pieces:
        p = field(1, 2, text.encode("utf-8")) + field(2, 5, struct.pack("<f", score)) + field(3, 0, typ)
        out += field(1, 2, p)
    trainer = field(3, 0, 2) + field(35, 0, int(byte_fallback)) + field(40, 0, 0) + field(41, 0, 1) + field(42, 0, 2)
    out += field(2, 2, trainer)
    norm = field(1, 2, b"identity") + field(3, 0, int(dummy_prefix)) + field(4, 0, 0)
    out += field(3, 2, norm)
    return out


def sp_pieces(with_bytes=True, controls=()):
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(c, 0.0, 3) for c in controls]
    if with_bytes:
        pieces += [("<0x%02X>" % b, 0.0, 6) for b in range(256)]
    words = ["▁", "e", "t", "a", "h", "▁t", "he", "▁the", "▁a", "in", "▁in", "▁▁", "▁▁▁▁", "é", "日", "本", "日本",
             "😀", "n", "g", "ng", "ing", "▁w", "o", "r", "l", "d", "▁wo", "rl", "▁world"]
    pieces += [(w, -float(i), 1) for i, w in enumerate(words)]
    return pieces


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def trimmed_bytelevel(path, keep_merges=40):
    j = json.load(open(path, encoding="utf-8"))
    merges = j["model"]["merges"][:keep_merges]
    keep = set()
    for a, b in merges:
        keep.update([a, b, a + b])
    vocab = j["model"]["vocab"]
    new = {}
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if len(tok) == 1 or tok in keep or any(tok == a["content"] for a in j["added_tokens"]):
            new[tok] = len(new)
    remap = {i: new[t] for t, i in vocab.items() if t in new}
    j["model"]["vocab"] = new
    j["model"]["merges"] = merges
    for a in j["added_tokens"]:
        a["id"] = remap[a["id"]]
    pp = j.get("post_processor")
    if pp and pp.get("type") == "TemplateProcessing":
        for st in pp["special_tokens"].values():
            st["ids"] = [remap[i] for i in st["ids"]]
    return json.dumps(j, ensure_ascii=False, separators=(",", ":"))


def tekken(with_specials, extra):
    vocab = [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": None} for i in range(256)]
    for w in extra:
        vocab.append({"rank": len(vocab), "token_bytes": base64.b64encode(w.encode()).decode(), "token_str": w})
    pattern = json.load(open(os.path.join(ROOT, "tests", "data", "bytelevel", "nemo.json"), encoding="utf-8"))
    pattern = pattern["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    nspecial = 5 if with_specials else 20
    j = {"config": {"pattern": pattern, "num_vocab_tokens": len(vocab), "default_vocab_size": nspecial + len(vocab),
                    "default_num_special_tokens": nspecial, "version": "v7" if with_specials else "v3"},
         "vocab": vocab}
    if with_specials:
        j["special_tokens"] = [{"rank": i, "token_str": s, "is_control": True}
                               for i, s in enumerate(["<unk>", "<s>", "</s>", "[INST]", "[/INST]"])]
    return json.dumps(j, separators=(",", ":"))


def main():
    if os.path.isdir(SEEDS):
        shutil.rmtree(SEEDS)
    write("sp_model", "bpe_bytes.model", sp_model(sp_pieces()))
    write("sp_model", "bpe_controls.model", sp_model(sp_pieces(controls=["[INST]", "[/INST]"])))
    write("sp_model", "bpe_nobytes.model", sp_model(sp_pieces(with_bytes=False), byte_fallback=False, dummy_prefix=False))

    stories = os.path.join(ROOT, "..", "shared", "data", "models", "stories260K", "tokenizer.json")
    if os.path.exists(stories):
        write("hf_json", "stories260K.json", open(stories, encoding="utf-8").read())
    for name in ("gpt2", "gpt2_prefix_space", "smollm", "llama3", "nemo"):
        write("hf_json", name + ".json", trimmed_bytelevel(os.path.join(ROOT, "tests", "data", "bytelevel", name + ".json")))

    write("tekken_json", "v7_specials.json", tekken(True, ["ab", "abc", " t", "he", " the", "in", "ing"]))
    write("tekken_json", "v3_default_specials.json", tekken(False, ["ab", "  ", "\n\n", "é"]))

    for i, text in enumerate(["Hello world", "  lots   of\n\n spaces\t", "日本語のテキスト 😀 🦙", "don't STOP 12345",
                              "e\u0301 \u200d [INST] <s> </s>", "\xff\xfe", "a" * 100, "▁x▁", "def f(x):\n    return x\r\n"]):
        write("encode", "text%d" % i, text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
    write("encode", "invalid", b"\xf0\x9f\xa6 \xed\xa0\x80 \xc0\xaf abc \x80")
    n = sum(len(files) for _, _, files in os.walk(SEEDS))
    print(f"wrote {n} seeds under {SEEDS}")


if __name__ == "__main__":
    main()
