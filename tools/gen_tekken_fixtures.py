#!/usr/bin/env python3
"""Writes tests/data/tekken_cases.json: token ids and decodes produced by mistral-common's Tekkenizer
(the reference) for a deterministic corpus, for tests/test_tekken.cpp.

- cases: >= 1000 strings (many scripts, emoji and ZWJ sequences, random Unicode including astral planes
  and unassigned/private-use code points, control characters, whitespace runs, digits, code, literal
  special-token strings, long words) -> ids of encode(text, bos=False, eos=False). Decoding those ids
  gives the text back (checked here), so the decode is stored only when it differs.
- invalid_utf8: byte strings that are not UTF-8 (hex) -> ids of encode(bytes.decode("utf-8", "replace")),
  the documented behaviour of our encoder for such input.
- decode: random id sequences (special tokens, single bytes, ordinary tokens) -> decode(ids) with the
  default policy (special tokens ignored), exercising U+FFFD replacement.
Both tekken files shipped in the wheel are covered (tekken_240911.json fully, tekken_240718.json with a
smaller set).

Usage: python3 tools/gen_tekken_fixtures.py [-o tests/data/tekken_cases.json]
"""
import argparse
import json
import os
import random

import mistral_common
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

ATOMS = [
    # Latin, contractions, casing
    "Hello", "world", " the", "The", "THE", "don't", "I'M", "we're", "HTTPServer", "iPhone", "McDonald",
    "naïve", "café", "Straße", "ǅemal", "ǈ", "ʰ", "ſ", "ﬁ", "Ⅻ", "x²", "½", "ℕ", "ℵ",
    # other scripts
    "Ωμέγα", "привет", "Москва", "مرحبا", "العربية", "שלום", "हिन्दी", "नमस्ते", "ไทย", "ภาษาไทย", "日本語",
    "東京", "ひらがな", "カタカナ", "中文", "汉字", "한국어", "안녕하세요", "ქართული", "Հայերեն", "ᚠᚢᚦ",
    "ꦗꦮ", "𐌰𐌱", "𝕏𝕐", "𝔘𝔫𝔦", "ﷺ", "e\u0301", "a\u0300\u0301\u0302", "\u0301", "\u200d", "\u200b",
    "\ufeff", "\u00ad", "\u2060",
    # digits of several kinds
    "0", "42", "3.14", "1,000,000", "٣٤٥", "४२", "１２３", "①②", "2024-01-01", "0x1F",
    # emoji
    "😀", "🦙", "👍🏽", "👩‍👩‍👧", "🇫🇷", "❤️", "🏳️‍🌈", "🧑‍💻",
    # punctuation and code
    ",", ".", "!", "?", "...", "—", "–", "«", "»", "“", "”", "'", "\"", "(", ")", "{}", "[]", "<>", "/", "//",
    "://", "https://example.com/a/b?c=d", "def f(x):", "return x**2", "#include <stdio.h>", "a->b", "x != y",
    "i++", "/* c */", "$", "€", "¥", "%", "@", "#", "&&", "||", "\\", "`code`",
    # whitespace and controls
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", "\u00a0", "\u2003", "\u3000", "\u0085",
    "\u2028", "\u2029", "\u202f", "\x0b", "\x0c", "\x00", "\x01", "\x1b", "\x1f", "\x7f", "\x80", "\x9f",
    # literal special-token text (never special ids)
    "[INST]", "[/INST]", "<s>", "</s>", "<unk>", "[TOOL_CALLS]", "<SPECIAL_999>", "[IMG]",
]


def random_cp(rng):
    r = rng.random()
    if r < 0.4:
        cp = rng.randrange(0x20, 0x3000)
    elif r < 0.7:
        cp = rng.randrange(0x3000, 0x10000)
    else:
        cp = rng.randrange(0x10000, 0x110000)  # astral planes, unassigned and private use included
    if 0xD800 <= cp <= 0xDFFF:
        cp = 0x41
    return chr(cp)


def random_text(rng):
    parts = []
    for _ in range(rng.randrange(0, 20)):
        r = rng.random()
        if r < 0.7:
            parts.append(rng.choice(ATOMS))
        elif r < 0.9:
            parts.append(random_cp(rng))
        else:
            parts.append(" " * rng.randrange(1, 6))
    return "".join(parts)


def structured(rng):
    out = ["", " ", "a", "A", "\n", "Hello world", "Hello, world!", " leading", "trailing ", "  two", "two  ",
           "line1\nline2\r\nline3\rline4", "tab\tseparated\tvalues", "  \n  \n", "\n\n\n\nx", "x\n\n\n\n",
           "ALLCAPS", "lowercase", "camelCaseWord", "PascalCaseWord", "snake_case_word", "kebab-case-word",
           "The year 2024 had 366 days.", "Ǆemal ǅemal ǆemal", "ſtraße", "'s 't 're 've 'm 'll 'd",
           "'S 'T 'RE 'VE 'M 'LL 'D", "it's don't I'm we'll they've you're he'd", "a/b/c\n/d\r\n//",
           "!!!///\n\n", " !\n", "?\r\n\r\n", "...\n/", "e\u0301\u0301\u0301", "\u0301\u0301abc", "A\u0301BC",
           "ABC\u0301def", "ʰʰʰABC", "ABCʰ", "日本語ABCdef", "Ωmega", "ΣΊΣΥΦΟΣ", "İstanbul"]
    for n in (1, 2, 3, 5, 17, 64, 200):
        out += [" " * n, "\n" * n, "\t" * n, " " * n + "x", "x" + " " * n, "\r\n" * n, " \n" * n, "\u3000" * n,
                " " * n + "\n" + " " * n + "y"]
    out += ["a" * 100, "ab" * 80, "Z" * 70, "9" * 300, "😀" * 40, "日本" * 50, "x" * 1000, "Aa" * 500,
            "supercalifragilisticexpialidocious" * 5, "".join(chr(0x1F600 + i) for i in range(80)),
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3000)),
            "".join(rng.choice("ABCDEFGHIJabcdefghij") for _ in range(2000)),
            "".join(rng.choice("абвгдеёжзийклмн") for _ in range(500))]
    return out


def invalid_bytes(rng):
    out = [b"\xff", b"\xc0\xaf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf0\x9f\xa6",
           b"abc\xf0\x9f", b"\x80\x80\x80", b"caf\xe9", b"\xe2\x82", b"Hello \xfe\xfe world", b"\xf8\x88\x80\x80\x80",
           b"\xc2", b"\xe1\x80", b"\xf1\x80\x80", b"x\xc3\x28y", b"\xa0\xa1", b"\xef\xbf"]
    for _ in range(90):
        good = random_text(rng).encode("utf-8")
        b = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(0, len(b) + 1)
            b[pos:pos] = bytes([rng.randrange(0x80, 0x100)])
        out.append(bytes(b))
    return out


def random_ids(rng, tok):
    n = tok.num_special_tokens
    ids = []
    for _ in range(rng.randrange(1, 12)):
        r = rng.random()
        if r < 0.15:
            ids.append(rng.randrange(0, n))
        elif r < 0.6:
            ids.append(n + rng.randrange(0, 256))
        else:
            ids.append(rng.randrange(n, tok.n_words))
    return ids


def make(path, n_random, n_invalid, n_decode, seed):
    tok = Tekkenizer.from_file(path)
    rng = random.Random(seed)
    texts = structured(rng) + [random_text(rng) for _ in range(n_random)]
    cases = []
    for t in texts:
        ids = tok.encode(t, bos=False, eos=False)
        c = {"text": t, "ids": ids}
        d = tok.decode(ids)
        if d != t:
            c["decoded"] = d
        cases.append(c)
    inv = []
    for b in invalid_bytes(rng)[:n_invalid]:
        inv.append({"hex": b.hex(), "ids": tok.encode(b.decode("utf-8", "replace"), bos=False, eos=False)})
    dec = []
    for _ in range(n_decode):
        ids = random_ids(rng, tok)
        dec.append({"ids": ids, "text": tok.decode(ids)})
    return {
        "file": os.path.basename(path),
        "vocab_size": tok.n_words,
        "num_special_tokens": tok.num_special_tokens,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "cases": cases,
        "invalid_utf8": inv,
        "decode": dec,
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", default=os.path.join(here, "..", "tests", "data", "tekken_cases.json"))
    args = ap.parse_args()
    data_dir = os.path.join(os.path.dirname(mistral_common.__file__), "data")
    out = {
        "generator": "tools/gen_tekken_fixtures.py",
        "mistral_common_version": mistral_common.__version__,
        "tokenizers": [
            make(os.path.join(data_dir, "tekken_240911.json"), 1200, 100, 200, 1),
            make(os.path.join(data_dir, "tekken_240718.json"), 200, 20, 30, 2),
        ],
    }
    os.makedirs(os.path.dirname(args.o), exist_ok=True)
    with open(args.o, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    n = sum(len(t["cases"]) for t in out["tokenizers"])
    print(f"wrote {args.o}: {n} strings, {os.path.getsize(args.o)} bytes")


if __name__ == "__main__":
    main()
