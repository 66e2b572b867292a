"""The PyTorch side of bench/vs_pytorch.sh: the same shapes as the lathe configs that
script writes, trained (f32, dropout 0, AdamW, clip 1.0) or used for greedy generation.

  python torch_bench.py train MODEL --threads T --steps N [--compile]
  python torch_bench.py generate --threads T --new-tokens 200

Prints one JSON line. train: tokens/s of every step (the caller drops the first ones as
warm-up, as for lathe); generate: seconds of model.generate(max_new_tokens=N) with the KV
cache, best and median of --repeat runs. Peak RSS is measured by the caller (/usr/bin/time).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

# MODEL -> (builder, micro-batch, sequence length). Matches the lathe configs: GPT-2 with
# tanh GELU, learned positions, tied embeddings, biases; Llama with RMSNorm, SwiGLU
# (d_ff 768 = lathe's round_up(2/3 * 4 * 256, 256)), RoPE theta 1e4, 4 query / 2 kv heads,
# no biases, tied embeddings.
def gpt2(n_layer, d, heads, vocab):
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab, n_positions=256, n_embd=d, n_layer=n_layer, n_head=heads,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, use_cache=False, bos_token_id=None,
        eos_token_id=None))


def llama(n_layer, d, heads, kv_heads, d_ff, vocab):
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=d, intermediate_size=d_ff, num_hidden_layers=n_layer,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, attention_dropout=0.0, use_cache=False, bos_token_id=None, eos_token_id=None))


MODELS = {
    "gpt2_small": (lambda: gpt2(4, 256, 4, 256), 8, 256),
    "llama_small": (lambda: llama(4, 256, 4, 2, 768, 256), 8, 256),
    "gpt2_50k": (lambda: gpt2(6, 384, 6, 50257), 4, 256),
}


def train(a):
    build, batch, seq = MODELS[a.model]
    torch.manual_seed(1337)
    model = build().float().train()
    n_params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    # No decay on 1-D parameters (norm gains, biases), as lathe's decay_1d_params false.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.999), eps=1e-8)

    def step(x, y):
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.view(-1, vocab), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if a.compile:
        step = torch.compile(step)
    g = torch.Generator().manual_seed(0)
    rates, losses = [], []
    t_first = None
    for i in range(a.steps):
        data = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        t0 = time.perf_counter()
        loss = step(x, y)
        lv = float(loss.item())
        dt = time.perf_counter() - t0
        if t_first is None:
            t_first = dt
        rates.append(batch * seq / dt)
        losses.append(lv)
    print(json.dumps({"side": "torch", "model": a.model, "threads": torch.get_num_threads(), "compile": a.compile,
                      "params": n_params, "tokens_per_step": batch * seq, "tokens_per_s": rates,
                      "first_step_s": t_first, "loss": losses}))


def generate(a):
    torch.manual_seed(1337)
    model = MODELS["gpt2_small"][0]().float().eval()
    model.generation_config.pad_token_id = 0
    prompt = torch.tensor([[ord(c) for c in "The "]])  # byte ids, as lathe's byte tokenizer
    times = []
    with torch.inference_mode():
        for r in range(a.repeat + 1):  # the first run warms up
            t0 = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
                                 use_cache=True, eos_token_id=None)
            dt = time.perf_counter() - t0
            assert out.shape[1] == prompt.shape[1] + a.new_tokens, out.shape
            if r > 0:
                times.append(dt)
    print(json.dumps({"side": "torch", "mode": "generate", "threads": torch.get_num_threads(),
                      "new_tokens": a.new_tokens, "seconds": times,
                      "tokens_per_s_median": a.new_tokens / statistics.median(times),
                      "tokens_per_s_best": a.new_tokens / min(times)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "generate"])
    ap.add_argument("model", nargs="?", default="gpt2_small", choices=sorted(MODELS))
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    train(a) if a.mode == "train" else generate(a)


if __name__ == "__main__":
    sys.exit(main())
