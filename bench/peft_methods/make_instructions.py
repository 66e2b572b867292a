"""A synthetic instruction set for the PEFT benchmark (no download): arithmetic, string and
list tasks with deterministic answers, as prompt/response JSONL. Usage:
    python3 bench/peft_methods/make_instructions.py OUT.jsonl [N] [SEED]
"""
import json
import random
import sys

WORDS = ("apple river stone cloud tiger maple silver candle window garden rocket pepper "
         "lantern meadow falcon harbor velvet marble thunder orchid").split()


def sample(rng):
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randrange(50), rng.randrange(50)
        return f"What is {a} + {b}?", f"{a} + {b} = {a + b}"
    if kind == 1:
        a, b = rng.randrange(50), rng.randrange(50)
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", f"{a} - {b} = {a - b}"
    if kind == 2:
        w = rng.choice(WORDS)
        return f"Reverse the word: {w}", w[::-1]
    if kind == 3:
        w = rng.choice(WORDS)
        return f"Write in capitals: {w}", w.upper()
    if kind == 4:
        xs = rng.sample(range(10), 4)
        return "Sort: " + " ".join(map(str, xs)), " ".join(map(str, sorted(xs)))
    w = rng.choice(WORDS)
    return f"How many letters are in {w}?", f"{w} has {len(w)} letters"


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    with open(out, "w") as f:
        for _ in range(n):
            p, r = sample(rng)
            f.write(json.dumps({"prompt": p, "response": r}) + "\n")


if __name__ == "__main__":
    main()
