#!/usr/bin/env python3
"""Trains small GPT-2-style byte-level BPE tokenizers with Hugging Face `tokenizers` (no hub access is
needed) and records the ids `tokenizers` produces, for tests/test_bytelevel.cpp.

Writes tests/data/bytelevel/<name>.json (the tokenizers) and tests/data/bytelevel/cases.json:
  {"tokenizers": {name: {"bos_id", "eos_id", "vocab_size"}},
   "texts": [...],                                   # shared corpus
   "ids": {name: [[...] per text]},                  # encode(text, add_special_tokens=False)
   "ids_with_bos": {name: [[...] for the first 50 texts]},   # add_special_tokens=True
   "decode": {name: [{"ids": [...], "text": ...}]}}  # decode(ids, skip_special_tokens=True)
Special-token strings in the text are encoded as text (encode_special_tokens = True), as our encoder
does: it never produces special tokens from text.

The pre-tokenizers covered: GPT-2's ByteLevel regex (with and without add_prefix_space), Digits +
ByteLevel (SmolLM), Split(Llama-3 regex) + ByteLevel(use_regex=False) with ignore_merges (Llama-3), and
Split(tekken regex) + ByteLevel (Mistral-Nemo's tokenizer.json layout); and GPT-2 with the tokens of
some bytes removed (real vocabularies may lack a few: tokenizers drops such bytes, or maps them to a
fused <unk>).

Random code points come from the whole code space (astral, unassigned and private use included); the
Oniguruma in tokenizers 0.23 classifies them as our tables (Unicode 16) do.

Usage: pip install tokenizers; python3 tools/gen_bytelevel_fixtures.py
"""
import json
import os
import random

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "bytelevel")

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

ATOMS = [
    "Hello", "world", " the", "The", "THE", "don't", "I'M", "we're", "WE'LL", "it'S", "'ſ", "HTTPServer",
    "iPhone", "naïve", "café", "Straße", "ǅemal", "ʰ", "ſ", "Ⅻ", "x²", "½", "Ωμέγα", "привет", "مرحبا",
    "שלום", "हिन्दी", "ไทย", "日本語", "ひらがな", "中文", "한국어", "ქართული", "𝕏𝕐", "e\u0301", "\u0301",
    "\u200d", "\ufeff", "0", "42", "3.14", "1,000,000", "٣٤٥", "１２３", "2024-01-01", "12345678", "😀",
    "🦙", "👍🏽", "👩‍👩‍👧", "🇫🇷", ",", ".", "!", "?", "...", "—", "«", "»", "'", "\"", "(", ")", "{}", "/",
    "https://example.com/a/b", "def f(x):", "return x**2", "#include <stdio.h>", "a->b", "i++", "$", "€",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\u00a0", "\u3000", "\u0085", "\u2028",
    "\x00", "\x01", "\x1b", "\x7f", "<s>", "</s>", "<|endoftext|>", "<|begin_of_text|>", "<|im_start|>",
]

# Random code points: astral planes, unassigned and private use included.
ANY_CP = [c for c in range(0x20, 0x110000) if not (0xD800 <= c <= 0xDFFF)]


def random_text(rng):
    parts = []
    for _ in range(rng.randrange(0, 16)):
        r = rng.random()
        if r < 0.7:
            parts.append(rng.choice(ATOMS))
        elif r < 0.9:
            parts.append(chr(rng.choice(ANY_CP)))
        else:
            parts.append(" " * rng.randrange(1, 6))
    return "".join(parts)


def training_corpus(rng):
    docs = []
    for name in ("LICENSE",):  # stable text, so regenerating gives the same tokenizers
        p = os.path.join(HERE, "..", name)
        if os.path.exists(p):
            docs += open(p, encoding="utf-8").read().split("\n\n")
    docs += [" ".join(rng.choice(ATOMS) for _ in range(30)) for _ in range(300)]
    return docs


def gpt2_byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def without_bytes(t, unk):
    """The tokenizer with the tokens of some bytes removed (and every token and merge containing them),
    as in real vocabularies that lack a few bytes (SmolLM2 lacks 21)."""
    j = json.loads(t.to_str())
    m = gpt2_byte_chars()
    drop = {m[b] for b in list(range(0, 9)) + [0xC0, 0xC1] + list(range(0xF5, 0x100)) + [ord("q"), 0xA4]}
    j["model"]["vocab"] = {k: i for k, i in j["model"]["vocab"].items() if not any(c in drop for c in k)}
    j["model"]["merges"] = [mm for mm in j["model"]["merges"] if not any(c in drop for c in mm[0] + mm[1])]
    if unk:
        j["model"]["unk_token"] = "<|endoftext|>"
        j["model"]["fuse_unk"] = True
    t2 = Tokenizer.from_str(json.dumps(j))
    t2.encode_special_tokens = True
    return t2


def make(kind):
    if kind in ("missing_bytes", "missing_bytes_unk"):
        t, specials = make("gpt2")
        return without_bytes(t, kind == "missing_bytes_unk"), specials
    if kind == "gpt2":
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        t.post_processor = processors.ByteLevel(trim_offsets=False)
        specials = ["<|endoftext|>"]
    elif kind == "gpt2_prefix_space":
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        specials = ["<|endoftext|>"]
    elif kind == "smollm":
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    elif kind == "llama3":
        t = Tokenizer(models.BPE(ignore_merges=True))
        t.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    elif kind == "nemo":
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(TEKKEN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = ["<unk>", "<s>", "</s>"]
    else:
        raise ValueError(kind)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t.train_from_iterator(training_corpus(random.Random(7)), trainer=trainer)
    if kind == "llama3":
        t.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])
    if kind == "nemo":
        t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", t.token_to_id("<s>"))])
    t.encode_special_tokens = True
    return t, specials


def structured():
    out = ["", " ", "a", "\n", "Hello world", " leading", "trailing ", "it's don't I'm we'll they've",
           "IT'S DON'T I'M WE'LL", "'S 'ſ 'Ll", "a/b/c\n/d\r\n//", "!!!///\n\n", "x=1234567 y=89",
           "ABCdef GHIjkl", "e\u0301\u0301abc", "日本語ABCdef", "<|endoftext|>", "<s>[INST]</s>"]
    for n in (1, 2, 3, 7, 40):
        out += [" " * n, "\n" * n, " " * n + "x", "x" + " " * n, "\r\n" * n, " \n" * n, "\t" * n + "y"]
    out += ["a" * 100, "Hello" * 40, "9" * 50, "😀" * 20, "日本" * 30]
    return out


def main():
    rng = random.Random(11)
    texts = structured() + [random_text(rng) for _ in range(700)]
    os.makedirs(OUT, exist_ok=True)
    cases = {"generator": "tools/gen_bytelevel_fixtures.py", "tokenizers_version": tokenizers.__version__,
             "tokenizers": {}, "texts": texts, "ids": {}, "ids_with_bos": {}, "decode": {}}
    for kind in ("gpt2", "gpt2_prefix_space", "smollm", "llama3", "nemo", "missing_bytes", "missing_bytes_unk"):
        t, specials = make(kind)
        t.save(os.path.join(OUT, kind + ".json"))
        ids = [t.encode(x, add_special_tokens=False).ids for x in texts]
        for x, i in zip(texts, ids):
            d = t.decode(i, skip_special_tokens=True)
            want = (" " + x if kind == "gpt2_prefix_space" and not x.startswith(" ") and x else x)
            assert d == want or kind.startswith("missing_bytes"), (kind, x, d)
        cases["ids"][kind] = ids
        cases["ids_with_bos"][kind] = [t.encode(x, add_special_tokens=True).ids for x in texts[:50]]
        bos = {"llama3": "<|begin_of_text|>", "nemo": "<s>"}.get(kind)
        eos = {"llama3": "<|end_of_text|>", "nemo": "</s>"}.get(kind, "<|endoftext|>")
        cases["tokenizers"][kind] = {"vocab_size": max(t.get_vocab().values()) + 1,
                                     "bos_id": t.token_to_id(bos) if bos else -1,
                                     "eos_id": t.token_to_id(eos)}
        dec = []
        ids_present = sorted(t.get_vocab().values())
        for _ in range(60):
            seq = [rng.choice(ids_present) if rng.random() < 0.7 else
                   t.token_to_id(rng.choice(specials)) for _ in range(rng.randrange(1, 10))]
            dec.append({"ids": seq, "text": t.decode(seq, skip_special_tokens=True)})
        cases["decode"][kind] = dec
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT}: {len(texts)} texts x {len(cases['ids'])} tokenizers, {total} bytes")


if __name__ == "__main__":
    main()
