#!/usr/bin/env python3
"""Reference token ids and chat-template renderings for the tokenizer tests.

Ids come from the `tokenizers` library on tokenizer.json (transformers 5.24 loads these files as
a plain TokenizersBackend and no longer prepends BOS; DeepSeek's tokenizer_config says
add_bos_token, which the engine honours, so the expected ids are [bos] + these). Templates come
from `apply_chat_template`. Output: tests/tokenizer_refs.json (committed).

    python3 scripts/fetch_tokenizers.py
    .venv/bin/python scripts/make_token_refs.py
"""
import json
import os

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers
import transformers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOK = os.path.join(ROOT, "assets", "tokenizers")

TEXTS = [
    "Hello, world!",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "深度求索（DeepSeek）是一家中国人工智能公司。",
    "日本語のテキストとカタカナ、ひらがな。한국어 문장도 있습니다.",
    "Emoji 🚀🔥👍🏽 and flags 🇫🇷 mixed with ZWJ 👨‍👩‍👧‍👦.",
    "Numbers: 1234567890, 3.14159, 1e-10, 42nd, ٣٤٥ ۱۲۳",
    "Whitespace   runs\t\ttabs\n\n\n  newlines\r\n   end   ",
    "    indented\n\tcode();\n",
    "Café naïve façade Zürich — “quotes” ‘single’ … ellipsis",
    "x<｜fim▁begin｜>def f():<｜fim▁hole｜>\n    pass<｜fim▁end｜>",
    "<｜begin▁of▁sentence｜>already has a BOS",
    "URLs https://example.com/a?b=c&d=e#frag and emails a.b@c.de",
    "Mixed中文and English在一起123abc",
    "",
    " ",
    "a" * 50 + " " + "ab" * 30,
    "ÀÉÎÕÜ ß ∑∫√∞ ≠≤≥ ←→ ♠♥",
    "'s 't 're 've 'm 'll 'd don't I'M",
]

CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is MLA?"}],
    "system": [{"role": "system", "content": "You are a helpful assistant."},
               {"role": "user", "content": "Hi"}],
    "multi_turn": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "2+2?"},
                   {"role": "assistant", "content": "4"},
                   {"role": "user", "content": "And 3+3?"}],
    "unicode": [{"role": "user", "content": "你好！🚀\n\nline two"}],
    "tool_call": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "content": "{\"temp\": 21}"},
                  {"role": "assistant", "content": "It is 21 degrees."},
                  {"role": "user", "content": "Thanks"}],
    "r1_think": [{"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": "<think>greet</think>Hello!"},
                 {"role": "user", "content": "Bye"}],
}


def render_like_transformers4(template, messages, bos, eos, add_generation_prompt):
    """transformers 5 drops `content: None` from messages before rendering, which breaks the
    tool-call branch of DeepSeek's V2.5/V3 templates (they test `content is none`); OpenAI clients
    send `content: null` there. For those conversations we render with the same Jinja settings
    transformers uses, keeping the null (as transformers 4 did). Checked equal to
    apply_chat_template on every conversation where both work."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    def raise_exception(m):
        raise jinja2.exceptions.TemplateError(m)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt)


def token_str(t):
    return t.get("content") if isinstance(t, dict) else t


def main():
    out = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "texts": TEXTS, "models": {}}
    for name in sorted(os.listdir(TOK)):
        d = os.path.join(TOK, name)
        tok = transformers.AutoTokenizer.from_pretrained(d)
        raw = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        entry = {"raw_ids": [], "decoded": [], "templates": {}}
        for t in TEXTS:
            raw_ids = raw.encode(t, add_special_tokens=False).ids
            assert tok(t)["input_ids"][-len(raw_ids):] == raw_ids or not raw_ids, (name, t)
            entry["raw_ids"].append(raw_ids)
            entry["decoded"].append(raw.decode(raw_ids, skip_special_tokens=True))
        cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
        entry["add_bos_token"] = cfg.get("add_bos_token", False)
        entry["bos_id"] = raw.token_to_id(token_str(cfg["bos_token"]))
        if tok.chat_template:
            bos, eos = token_str(cfg["bos_token"]), token_str(cfg["eos_token"])
            for conv_name, msgs in CONVERSATIONS.items():
                for gen in (True, False):
                    key = f"{conv_name}|{'gen' if gen else 'nogen'}"
                    try:
                        mine = render_like_transformers4(tok.chat_template, msgs, bos, eos, gen)
                    except Exception as e:  # the template rejects this conversation
                        mine = {"error": str(e)}
                    try:
                        theirs = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
                        assert theirs == mine, (name, key, theirs, mine)
                    except jinja2.exceptions.UndefinedError:
                        theirs = mine
                    entry["templates"][key] = theirs
        out["models"][name] = entry
        print(name, len(entry["templates"]), "templates")
    with open(os.path.join(ROOT, "tests", "tokenizer_refs.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
