#!/usr/bin/env python3
"""Writes tests/fixtures/hf_sliding_window/: tiny transformers models with sliding-window
attention and what transformers computes with them, for tests/models/test_hf_sliding_window.cpp.
Not run in CI (which has no torch); the C++ test reads only the committed files.

  mistral/  MistralForCausalLM, window 4 on both layers
  qwen2/    Qwen2ForCausalLM, use_sliding_window with max_window_layers 1 (layer 0 attends
            fully, layer 1 through the window of 4)

Each directory holds config.json + model.safetensors (saved by save_pretrained) and
expected.json: `input_ids` (12 tokens, three times the window), `logits` [12, vocab] of one
forward over them, and `generated` = model.generate(greedy, 20 new tokens, KV cache) from
them: 32 positions, far past the window. The random weights are scaled up from transformers'
init (std 0.02 gives near-uniform logits) so that every position's prediction depends on
attention; `min_margin` is the smallest gap between the best and second-best logit over the
greedy steps, so a test can tell a real disagreement from an f32 rounding tie.

usage (a venv with torch, transformers and safetensors):
  python tests/hf/make_sliding_window_fixture.py tests/fixtures/hf_sliding_window
"""
import json
import os
import sys

import torch
import transformers
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

WINDOW = 4
VOCAB = 64
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    sliding_window=WINDOW,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def build(kind: str, seed: int):
    torch.manual_seed(seed)
    if kind == "mistral":
        cfg = MistralConfig(**COMMON, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        model = MistralForCausalLM(cfg)
    else:
        cfg = Qwen2Config(**COMMON, use_sliding_window=True, max_window_layers=1,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        model = Qwen2ForCausalLM(cfg)
    # Eager attention: the plain masked softmax, whose mask is transformers' sliding-window
    # rule (masking_utils.sliding_window_overlay: key j visible to query i iff j > i - window).
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.35)
            elif "norm" in name:
                p.uniform_(0.7, 1.3)
            else:  # Qwen2's q/k/v biases
                p.normal_(0.0, 0.2)
    return model.eval()


def margins(scores):
    out = []
    for s in scores:
        top = torch.topk(s[0].float(), 2).values
        out.append(float(top[0] - top[1]))
    return out


def main() -> int:
    root = sys.argv[1]
    ids = [5, 17, 3, 42, 8, 8, 61, 0, 23, 9, 36, 14]
    x = torch.tensor([ids])
    for kind in ("mistral", "qwen2"):
        # The seed (of 1..30) whose greedy steps have the widest best-vs-second logit gap.
        def margin_of(seed):
            with torch.no_grad():
                g = build(kind, seed).generate(x, max_new_tokens=20, do_sample=False, output_scores=True,
                                               return_dict_in_generate=True)
            return min(margins(g.scores))
        seed = max(range(1, 31), key=margin_of)
        model = build(kind, seed)
        d = os.path.join(root, kind)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        with torch.no_grad():
            logits = model(x).logits[0]
            # Without the window the model predicts differently (the fixture is not one a
            # windowless implementation passes).
            plain = {**model.config.to_dict(), "sliding_window": None}
            if kind == "qwen2":
                plain.update(use_sliding_window=False, layer_types=["full_attention"] * 2)
            full = type(model)(model.config.__class__(**plain))
            full.load_state_dict(model.state_dict())
            full.config._attn_implementation = "eager"
            full_logits = full.eval()(x).logits[0]
            gen = model.generate(x, max_new_tokens=20, do_sample=False, use_cache=True,
                                 output_scores=True, return_dict_in_generate=True)
        # The same tokens without the cache (every step recomputed over the whole sequence).
        with torch.no_grad():
            seq = list(ids)
            for _ in range(20):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        generated = gen.sequences[0].tolist()
        assert generated == seq, (kind, generated, seq)
        expected = {
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "window": WINDOW,
            "seed": seed,
            "input_ids": ids,
            "logits": [[float(v) for v in row] for row in logits],
            "generated": generated,
            "min_margin": min(margins(gen.scores)),
            "max_logit_change_without_window": float((logits - full_logits).abs().max()),
        }
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(expected, f, indent=None, separators=(",", ":"))
            f.write("\n")
        print(kind, "generated", generated, "min margin", expected["min_margin"],
              "change without window", expected["max_logit_change_without_window"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
