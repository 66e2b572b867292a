#!/usr/bin/env python3
"""Checks a `lathe export` directory with the real transformers (not run in CI, which has no
torch): AutoTokenizer loads it as PreTrainedTokenizerFast and encodes like lathe, config.json and
generation_config.json carry the tokenizer's bos/eos ids, and generate() stops at eos.

usage: check_export_transformers.py EXPORT_DIR
When the export holds GPT-2 files (vocab.json + merges.txt), the tokenizer AutoTokenizer loads
must encode like the tokenizers library over those files. Writes a one-line JSON summary to stdout; exits 1 on a mismatch.
"""
import json
import os
import sys

import tokenizers
import torch

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig


def main() -> int:
    d = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(d)
    cfg = json.load(open(f"{d}/config.json"))
    gen = GenerationConfig.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    errors = []
    # transformers 5 calls PreTrainedTokenizerFast TokenizersBackend.
    if type(tok).__name__ not in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        errors.append(f"AutoTokenizer gave {type(tok).__name__}")
    if tok.eos_token_id != cfg.get("eos_token_id") or gen.eos_token_id != cfg.get("eos_token_id"):
        errors.append(f"eos: tokenizer {tok.eos_token_id}, config {cfg.get('eos_token_id')}, generation {gen.eos_token_id}")
    text = "ROMEO: But soft!<|endoftext|>  What light\n\n through yonder, 1234 windows' café?"
    if os.path.exists(f"{d}/vocab.json"):
        # The GPT-2 files through the tokenizers library directly: BPE + ByteLevel, the
        # vocabulary's <|endoftext|> as a special token.
        ref = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(f"{d}/vocab.json", f"{d}/merges.txt"))
        ref.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        ref.add_special_tokens(["<|endoftext|>"])
        got, want = tok(text)["input_ids"], ref.encode(text).ids
        if got != want:
            errors.append(f"encode: AutoTokenizer {got}, tokenizers over vocab.json + merges.txt {want}")
    # Greedy generation forced to emit eos next must stop right there.
    ids = torch.tensor([tok("ROMEO:")["input_ids"]])
    with torch.no_grad():
        model.lm_head.weight.zero_()
        bias = torch.zeros(model.config.vocab_size)
        bias[cfg["eos_token_id"]] = 1.0
        model.lm_head.bias = torch.nn.Parameter(bias)
    out = model.generate(ids, max_new_tokens=10, do_sample=False)
    if out.shape[1] != ids.shape[1] + 1 or out[0, -1].item() != cfg["eos_token_id"]:
        errors.append(f"generate did not stop at eos: {out.tolist()}")
    print(json.dumps({"tokenizer_class": type(tok).__name__, "eos": tok.eos_token_id,
                      "generated": out.tolist(), "errors": errors}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
