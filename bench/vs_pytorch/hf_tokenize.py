"""HF tokenizers' encode_batch on a text file with the GPT-2 tokenizer: the baseline of
`lathe prepare` in bench/vs_pytorch.sh.

The text is cut where lathe's BpeTokenizer::next_cut cuts it (after "x\n" before an ASCII
letter, pieces of about 64 KiB), so both tokenize the same pieces and must give the same
number of tokens; --lines cuts at every such point instead (one short item per line).
Prints one JSON line: seconds for load, read+cut, encode, write; tokens; MB/s end to end
(load to written file, interpreter start excluded; the shell script also times the process).
Threads: RAYON_NUM_THREADS, set by the caller.
"""
import argparse
import json
import os
import re
import sys
import time

t_start = time.perf_counter()
from tokenizers import Tokenizer, models, pre_tokenizers, decoders  # noqa: E402
import numpy as np  # noqa: E402

CUT = re.compile(rb"(?<=[!-~]\n)(?=[A-Za-z])")


def pieces(data: bytes, piece: int):
    out, begin = [], 0
    while begin + piece < len(data):
        m = CUT.search(data, begin + piece)
        if m is None:
            break
        out.append(data[begin:m.start()])
        begin = m.start()
    out.append(data[begin:])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("text")
    ap.add_argument("--gpt2", required=True, help="directory with vocab.json and merges.txt")
    ap.add_argument("--out", required=True, help="where the ids go (.npy, int32)")
    ap.add_argument("--lines", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    bpe = models.BPE.from_file(os.path.join(a.gpt2, "vocab.json"), os.path.join(a.gpt2, "merges.txt"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    t1 = time.perf_counter()
    with open(a.text, "rb") as f:
        data = f.read()
    items = pieces(data, 1 if a.lines else 64 * 1024)
    # Every cut follows ASCII, so each piece is valid UTF-8 on its own.
    texts = [p.decode("utf-8") for p in items]
    t2 = time.perf_counter()
    enc = tok.encode_batch(texts, add_special_tokens=False)
    t3 = time.perf_counter()
    ids = np.fromiter((i for e in enc for i in e.ids), dtype=np.int32)
    np.save(a.out, ids)
    t4 = time.perf_counter()
    mb = len(data) / 1e6
    print(json.dumps({"bytes": len(data), "items": len(texts), "tokens": int(ids.size),
                      "import_s": round(t0 - t_start, 4), "load_s": round(t1 - t0, 4),
                      "read_cut_s": round(t2 - t1, 4), "encode_s": round(t3 - t2, 4),
                      "write_s": round(t4 - t3, 4), "mb_per_s_encode": round(mb / (t3 - t2), 2),
                      "mb_per_s_end_to_end": round(mb / (t4 - t0), 2)}))


if __name__ == "__main__":
    sys.exit(main())
