"""Writes crates/deepseek-engine/src/gguf_pretokenizers.json: for each pre-tokenizer name llama.cpp
writes into GGUF files (`tokenizer.ggml.pre`), the exact `pre_tokenizer` section of the
tokenizer.json it was made from, so a GGUF's tokenizer gives the same ids as the original.
Run after scripts/fetch_tokenizers.py."""
import json, pathlib
root = pathlib.Path(__file__).resolve().parent.parent
tok = lambda d: json.loads((root / "assets/tokenizers" / d / "tokenizer.json").read_text())["pre_tokenizer"]
gpt2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
out = {
    "deepseek-llm": tok("deepseek-llm-7b-base"),   # also DeepSeek-V2 / V2.5 (identical section)
    "deepseek-coder": tok("deepseek-coder-33b-base"),
    "deepseek-v3": tok("deepseek-v3"),             # also R1
    "gpt-2": gpt2,  # llama.cpp's name for the GPT-2 split
    # SmolLM / StarCoder: single digits, then GPT-2's byte-level split.
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, gpt2]},
    "starcoder": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, gpt2]},
}
path = root / "crates/deepseek-engine/src/gguf_pretokenizers.json"
path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
print("wrote", path)
