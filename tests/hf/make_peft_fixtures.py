#!/usr/bin/env python3
"""Fixtures for lathe's peft layer, made with Hugging Face's own code (transformers + peft),
and the reverse check of an adapter that lathe wrote. Not run in CI (no torch there).

Setup (a virtual environment outside the repo):
    python3 -m venv /tmp/peftvenv
    /tmp/peftvenv/bin/pip install torch transformers peft safetensors

make [OUT_DIR]   (default tests/fixtures/peft)
    For a tiny GPT-2 and a tiny Llama (random weights, 2 layers, width 32) writes
    OUT_DIR/<arch>/base/ (save_pretrained of the model), OUT_DIR/<arch>/adapter/
    (PeftModel.save_pretrained of a LoRA whose lora_B factors are random, so the adapter
    changes the output) and OUT_DIR/<arch>/expected.safetensors with input_ids [2, 8] (I64),
    logits (F32, the PeftModel's, eval mode) and base_logits (F32, the base model's).
    GPT-2: r 4, alpha 8, c_attn + c_proj + c_fc (fan_in_fan_out), rank_pattern
    {h.1.attn.c_attn: 2}, bias "lora_only" (with perturbed biases).
    Llama: r 4, alpha 16, rsLoRA, every linear but lm_head, alpha_pattern {down_proj: 8},
    modules_to_save [lm_head] (with a perturbed copy).

check DIR
    DIR holds base/ (a transformers model), adapter/ (an adapter lathe wrote) and
    lathe_logits.safetensors (input_ids, logits). Loads the adapter with
    PeftModel.from_pretrained and compares its logits with lathe's (max |diff| <= 1e-4).
    The C++ test PeftFixtures.WritesAdapterForPeftCheck writes such a DIR per architecture
    when LATHE_PEFT_CHECK_DIR is set:
        LATHE_PEFT_CHECK_DIR=/tmp/peft_check build/tests/peft/test_peft \\
            --gtest_filter='PeftFixtures.*'
        /tmp/peftvenv/bin/python tests/hf/make_peft_fixtures.py check /tmp/peft_check/gpt2
        /tmp/peftvenv/bin/python tests/hf/make_peft_fixtures.py check /tmp/peft_check/llama
Prints one JSON line per model; exits 1 on a mismatch.
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

IDS = torch.tensor([[5, 17, 3, 60, 42, 8, 31, 0], [11, 2, 59, 23, 7, 48, 19, 36]], dtype=torch.int64)


def randomize_(t, gen, std):
    with torch.no_grad():
        t.copy_(torch.randn(t.shape, generator=gen) * std)


def make_one(arch, out):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        base = GPT2LMHeadModel(cfg)
        lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
                          lora_dropout=0.0, rank_pattern={"h.1.attn.c_attn": 2}, bias="lora_only",
                          task_type="CAUSAL_LM")
    else:
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                          tie_word_embeddings=False, rms_norm_eps=1e-5)
        base = LlamaForCausalLM(cfg)
        lcfg = LoraConfig(r=4, lora_alpha=16, use_rslora=True, lora_dropout=0.0,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                          alpha_pattern={"down_proj": 8}, modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    # Weights of a trained model are not N(0, 0.02); a wider spread makes the logits differ.
    with torch.no_grad():
        for n, p in base.named_parameters():
            if p.dim() == 2:
                randomize_(p, gen, 0.2)
    base.eval()
    os.makedirs(f"{out}/{arch}", exist_ok=True)
    base.save_pretrained(f"{out}/{arch}/base", safe_serialization=True)
    with torch.no_grad():
        base_logits = base(IDS).logits.float().clone()
    model = get_peft_model(base, lcfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                randomize_(p, gen, 0.2)
            elif "modules_to_save" in n or (arch == "gpt2" and n.endswith(".bias") and "base_layer" in n):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.eval()
    model.save_pretrained(f"{out}/{arch}/adapter")
    with torch.no_grad():
        logits = model(IDS).logits.float()
    save_file({"input_ids": IDS, "logits": logits.contiguous(), "base_logits": base_logits.contiguous()},
              f"{out}/{arch}/expected.safetensors")
    keys = sorted(load_file(f"{out}/{arch}/adapter/adapter_model.safetensors").keys())
    print(json.dumps({"arch": arch, "tensors": len(keys), "first_keys": keys[:3],
                      "adapter_effect": float((logits - base_logits).abs().max())}))


def check(d):
    base = AutoModelForCausalLM.from_pretrained(f"{d}/base")
    model = PeftModel.from_pretrained(base, f"{d}/adapter")
    model.eval()
    ref = load_file(f"{d}/lathe_logits.safetensors")
    with torch.no_grad():
        logits = model(ref["input_ids"]).logits.float()
    diff = float((logits - ref["logits"]).abs().max())
    ok = diff <= 1e-4
    print(json.dumps({"dir": d, "max_abs_diff": diff, "ok": ok}))
    return 0 if ok else 1


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "make":
        out = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/peft"
        for arch in ("gpt2", "llama"):
            make_one(arch, out)
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        return check(sys.argv[2])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
