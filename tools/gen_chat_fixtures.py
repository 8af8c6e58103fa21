#!/usr/bin/env python3
"""Writes tests/data/chat_cases_*.json: random conversations and the token ids that the reference
implementations give for them. tests/test_chat.cpp checks that mistral-run's ChatEncoder gives the same ids.

  v1, v2, v3, v7: mistral-common (pip install mistral-common; 1.13.1 made the committed files), the authority on
                  Mistral's formats, with the tokenizer files of ../shared/data:
                    v1 -> tokenizers/mistral-v0.1/tokenizer.model
                    v2 -> tokenizers/mistral-v0.3/tokenizer.model.v3 read as version v2: mistral-common's own v2
                          file (mistral_instruct_tokenizer_240216.model.v2) differs from the v3 file only in the
                          names of 24 unused control tokens, so the ids of conversations without tools are the same
                    v3 -> tokenizers/mistral-v0.3/tokenizer.model.v3
                    v7 -> mistral-common's bundled mistral_instruct_tokenizer_241114.model.v7 (not in
                          ../shared/data; the test finds it in mistral-common's data directory)
  tekken_v3, tekken_v7: mistral-common with its bundled tekken_240718.json (Mistral-Nemo, version v3), and the
                  same file relabelled v7 (the v7 rules over a tekken vocabulary; its built-in special tokens
                  include [SYSTEM_PROMPT])
  chatml, zephyr: Hugging Face `tokenizers` + jinja2 rendering the real templates of OpenHermes-2.5-Mistral-7B
                  (ChatML) and zephyr-7b-beta, as transformers' apply_chat_template does, over the v0.1
                  tokenizer.json (ChatML adds <|im_end|>=32000 and <|im_start|>=32001 as OpenHermes does).

Each case: {"messages": [...], "generation": bool, "ids": [...]} or, for conversations the reference rejects,
{"messages": [...], "generation": bool, "error": "..."}. Deterministic for a given --seed.
"""
import argparse
import json
import os
import random
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

WORDS = [
    "hello", "Hello", "What's", "the", "weather", "like", "today", "5 + 5", "=", "10.", "Paris,", "France",
    "naïve", "café", "Ünïcödé", "日本語", "中文字符", "한국어", "😀", "👩‍💻", "🇫🇷", "Привет", "мир", "مرحبا",
    "שלום", "नमस्ते", "e\u0301", "ß", "ﬁ", "\u00a0", "…", "—", "x", "I", "a", "42", "3.14159", "$", "%", "#",
    "def f(x):", "return x", "{\"k\": [1, 2]}", "<b>", "http://example.com/a?b=c",
]
TRICKY = ["[INST]", "[/INST]", "</s>", "<s>", "[SYSTEM_PROMPT]", "<unk>", "▁", "<0x0A>", "<|im_start|>", "<|user|>"]
SEPS = [" ", " ", " ", " ", "", "  ", "\n", "\n\n", "\t", ", "]


def random_text(rng, allow_tricky=True, max_words=5):
    r = rng.random()
    if r < 0.06:
        return ""
    if r < 0.09:
        return rng.choice([" ", "  ", "\n", " \n "])
    n = rng.randint(1, max_words)
    pool = WORDS + (TRICKY if allow_tricky else [])
    parts = []
    for i in range(n):
        if i:
            parts.append(rng.choice(SEPS))
        parts.append(rng.choice(pool))
    s = "".join(parts)
    if rng.random() < 0.12:
        s = rng.choice([" ", "  ", "\n"]) + s
    if rng.random() < 0.15:
        s = s + rng.choice([" ", "  ", "\n", " \n", "\t"])
    return s


def random_conversation(rng, allow_tricky=True):
    """Returns (messages, generation). Mostly valid conversations; some the reference must reject."""
    kind = rng.random()
    msgs = []
    if rng.random() < 0.4:
        msgs.append({"role": "system", "content": random_text(rng, allow_tricky)})
    if rng.random() < 0.05:
        msgs.append({"role": "assistant", "content": random_text(rng, allow_tricky) or "ok"})
    turns = rng.randint(1, 5)
    for t in range(turns):
        msgs.append({"role": "user", "content": random_text(rng, allow_tricky)})
        if rng.random() < 0.08:
            msgs.append({"role": "user", "content": random_text(rng, allow_tricky)})
        if rng.random() < 0.08:
            msgs.append({"role": "system", "content": random_text(rng, allow_tricky)})
        if t + 1 < turns or kind >= 0.75:
            msgs.append({"role": "assistant", "content": random_text(rng, allow_tricky) or "Sure."})
            if rng.random() < 0.06:
                msgs.append({"role": "assistant", "content": random_text(rng, allow_tricky) or "More."})
    generation = kind < 0.75
    if kind >= 0.92:  # things the reference rejects (or edge cases it accepts): the encoder must agree
        choice = rng.randrange(6)
        if choice == 0:
            msgs = []
        elif choice == 1:
            msgs = [{"role": "assistant", "content": "Hi"}]
        elif choice == 2:
            generation = True  # ends with an assistant message
        elif choice == 3:
            generation = False
            msgs.append({"role": "user", "content": "unanswered"})  # finished conversation ending with a user
        elif choice == 4:
            msgs.insert(min(1, len(msgs)), {"role": "assistant", "content": ""})
        else:
            msgs = [{"role": "system", "content": random_text(rng, allow_tricky) or "Be brief."}]
            generation = True
    return msgs, generation


# ---- mistral-common ----------------------------------------------------------------------------------

def tekken_tokenizers(path):
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return (MistralTokenizer.from_file(path, mode=ValidationMode.test),
            MistralTokenizer.from_file(path, mode=ValidationMode.finetuning))


def mistral_tokenizers(version, path):
    from mistral_common.protocol.instruct.normalize import get_normalizer
    from mistral_common.protocol.instruct.validator import ValidationMode, get_validator
    from mistral_common.tokens.tokenizers.base import TokenizerVersion
    from mistral_common.tokens.tokenizers import instruct
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

    v = TokenizerVersion(version)
    cls = {"v1": instruct.InstructTokenizerV1, "v2": instruct.InstructTokenizerV2,
           "v3": instruct.InstructTokenizerV3, "v7": instruct.InstructTokenizerV7}[version]
    out = {}
    for mode in (ValidationMode.test, ValidationMode.finetuning):
        spm = SentencePieceTokenizer(path, tokenizer_version=v)
        out[mode] = MistralTokenizer(cls(spm), validator=get_validator(v, mode=mode),
                                     request_normalizer=get_normalizer(v))
    return out[ValidationMode.test], out[ValidationMode.finetuning]


def mistral_encode(toks, msgs, generation):
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    cls = {"user": UserMessage, "assistant": AssistantMessage, "system": SystemMessage}
    tok = toks[0] if generation else toks[1]
    try:
        req = ChatCompletionRequest(messages=[cls[m["role"]](content=m["content"]) for m in msgs])
        return tok.encode_chat_completion(req).tokens, None
    except Exception as e:  # noqa: BLE001 - any rejection counts
        return None, f"{type(e).__name__}: {e}".splitlines()[0][:200]


# ---- Hugging Face templates --------------------------------------------------------------------------

def hf_setup(fmt):
    import jinja2
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(os.path.join(SHARED, "tokenizers", "mistral-v0.1", "tokenizer.json"))
    added = {}
    if fmt == "chatml":
        tok.add_special_tokens([AddedToken("<|im_end|>", special=True, normalized=False),
                                AddedToken("<|im_start|>", special=True, normalized=False)])
        added = {"<|im_end|>": tok.token_to_id("<|im_end|>"), "<|im_start|>": tok.token_to_id("<|im_start|>")}
        assert added == {"<|im_end|>": 32000, "<|im_start|>": 32001}, added
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders chat templates
    template = CHATML_TEMPLATE if fmt == "chatml" else ZEPHYR_TEMPLATE
    return tok, env.from_string(template), template, added


def hf_encode(setup, msgs, generation):
    tok, tmpl, _, _ = setup
    if not msgs:
        return None, "empty conversation"
    last = msgs[-1]["role"]
    # Hugging Face's templates check nothing; these are mistral-run's own rules, the same for every format.
    if generation and len(msgs) > 1 and last == "assistant":
        return None, "generation needs a last user message"
    if not generation and last != "assistant":
        return None, "finished conversation needs a last assistant message"
    if len(msgs) == 1 and last not in ("user", "system"):
        return None, "must start with user or system"
    if any(m["role"] == "assistant" and not m["content"] for m in msgs):
        return None, "empty assistant message"
    text = tmpl.render(messages=msgs, add_generation_prompt=generation, bos_token="<s>", eos_token="</s>")
    return tok.encode(text, add_special_tokens=False).ids, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=240)
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data"))
    ap.add_argument("--v7-tokenizer", default=None,
                    help="mistral_instruct_tokenizer_241114.model.v7 (default: the one bundled with mistral-common)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import mistral_common

    mc_data = os.path.join(os.path.dirname(mistral_common.__file__), "data")
    v7 = args.v7_tokenizer
    if v7 is None:
        cand = os.path.join(mc_data, "mistral_instruct_tokenizer_241114.model.v7")
        v7 = cand if os.path.exists(cand) else None
    # Tekken: Mistral-Nemo's tekken_240718.json (version v3) as it is, and the same file relabelled v7 (a copy in
    # a temporary directory) for the v7 rules with a tekken tokenizer.
    import tempfile
    tmpdir = tempfile.mkdtemp(prefix="gen-chat-")
    tekken = os.path.join(mc_data, "tekken_240718.json")
    with open(tekken, encoding="utf-8") as f:
        tj = json.load(f)
    assert tj["config"]["version"] == "v3", tj["config"]
    tj["config"]["version"] = "v7"
    tekken_v7 = os.path.join(tmpdir, "tekken_240718_as_v7.json")
    with open(tekken_v7, "w", encoding="utf-8") as f:
        json.dump(tj, f)
    del tj
    specs = {
        "v1": ("mistral-common", os.path.join(SHARED, "tokenizers", "mistral-v0.1", "tokenizer.model")),
        "v2": ("mistral-common", os.path.join(SHARED, "tokenizers", "mistral-v0.3", "tokenizer.model.v3")),
        "v3": ("mistral-common", os.path.join(SHARED, "tokenizers", "mistral-v0.3", "tokenizer.model.v3")),
        "tekken_v3": ("tekken", tekken),
        "tekken_v7": ("tekken", tekken_v7),
        "chatml": ("hf", None),
        "zephyr": ("hf", None),
    }
    if v7:
        specs["v7"] = ("mistral-common", v7)
    os.makedirs(args.out, exist_ok=True)
    for fmt, (kind, path) in specs.items():
        rng = random.Random(f"{args.seed}-{fmt}")
        cases = []
        if kind in ("mistral-common", "tekken"):
            toks = mistral_tokenizers(fmt, path) if kind == "mistral-common" else tekken_tokenizers(path)
            enc = lambda m, g: mistral_encode(toks, m, g)  # noqa: E731
            meta = {"reference": f"mistral-common {mistral_common.__version__}",
                    "tokenizer": "tekken_240718.json" if kind == "tekken" else os.path.basename(path),
                    "version": fmt.split("_")[-1]}
        else:
            setup = hf_setup(fmt)
            enc = lambda m, g: hf_encode(setup, m, g)  # noqa: E731
            import tokenizers
            meta = {"reference": f"tokenizers {tokenizers.__version__} + jinja2 (transformers' chat template rules)",
                    "tokenizer": "mistral-v0.1/tokenizer.json", "chat_template": setup[2],
                    "added_tokens": setup[3]}
        # v1 and v3 (the tokenizers in ../shared/data) get the full count; v2 (same ids as v3 without tools), v7
        # and the template formats half of it, to keep the files small.
        n_cases = args.cases if fmt in ("v1", "v3", "tekken_v3") else args.cases // 2
        while len(cases) < n_cases:
            msgs, generation = random_conversation(rng, allow_tricky=(kind != "hf"))
            ids, err = enc(msgs, generation)
            case = {"messages": msgs, "generation": generation}
            if err is None:
                case["ids"] = ids
            else:
                case["error"] = err
            cases.append(case)
        ok = sum("ids" in c for c in cases)
        out = os.path.join(args.out, f"chat_cases_{fmt}.json")
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "cases": cases}, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"{out}: {len(cases)} cases ({ok} encoded, {len(cases) - ok} rejected)", file=sys.stderr)
    import shutil
    shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
