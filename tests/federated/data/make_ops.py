"""Writes ops_train.jsonl and ops_val.jsonl: arithmetic prompt/response records with a
"category" field (add, sub, mul, max), the non-IID label of the federated tests, benchmark
and examples. Deterministic: python3 make_ops.py [N_TRAIN] [N_VAL]."""
import json
import random
import sys

OPS = {
    "add": ("What is {a} + {b}?", lambda a, b: f"{a} + {b} = {a + b}"),
    "sub": ("What is {a} minus {b}?", lambda a, b: f"{a} - {b} = {a - b}"),
    "mul": ("What is {a} times {b}?", lambda a, b: f"{a} * {b} = {a * b}"),
    "max": ("Which is larger, {a} or {b}?", lambda a, b: f"max({a}, {b}) = {max(a, b)}"),
}


def records(n, rng):
    names = sorted(OPS)
    for _ in range(n):
        op = rng.choice(names)
        a, b = rng.randrange(20), rng.randrange(20)
        prompt, answer = OPS[op]
        yield {"prompt": prompt.format(a=a, b=b), "response": answer(a, b), "category": op}


def main():
    n_train = int(sys.argv[1]) if len(sys.argv) > 1 else 800
    n_val = int(sys.argv[2]) if len(sys.argv) > 2 else 96
    rng = random.Random(14)
    for path, n in (("ops_train.jsonl", n_train), ("ops_val.jsonl", n_val)):
        with open(path, "w") as f:
            for r in records(n, rng):
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
