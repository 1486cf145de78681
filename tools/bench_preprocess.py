"""Benchmark: tokens/s of the whole preprocessing path against raw HF `tokenizers` encode_batch.

    python tools/bench_preprocess.py [--input=GLOB,GLOB] [--repeat=2] [--threads=1] [--tokenizer=DIR]

Both sides see the same text: the raw side is `tokenizers.ByteLevelBPETokenizer(...).encode_batch`
on every non-blank line; the whole path is `robertax.preprocess.preprocess` with one process
(read, UTF-8 checks, sentence splitting, encoding, ArrayRecord writing, index and manifest). With
--threads=1 both use one thread, the per-process figure; without it the Rust encoder uses every core.
The goal (issue 3) is the whole path within 1.5x of raw encoding.
"""

import argparse
import glob
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("ROBERTAX_TEST_DATA", REPO.parent / "shared" / "data"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=f"{DATA}/text/enwiki-excerpt/articles.txt,"
                                           f"{DATA}/text/tinyshakespeare/input.txt")
    parser.add_argument("--tokenizer", default=str(DATA / "bpe" / "roberta-base_hf"))
    parser.add_argument("--repeat", type=int, default=2, help="copies of the input (more text, steadier)")
    parser.add_argument("--threads", type=int, default=0, help="Rust encoder threads (0: all cores)")
    parser.add_argument("--split_sentences", type=int, default=1)
    parser.add_argument("--trials", type=int, default=3, help="best of N timings")
    args = parser.parse_args()
    if args.threads:  # must precede the first use of tokenizers' thread pool
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(REPO))
    from tokenizers import ByteLevelBPETokenizer

    from robertax import preprocess as preprocess_lib
    from robertax import tokenizer as tokenizer_lib

    with tempfile.TemporaryDirectory() as tmp:
        files = [p for pattern in args.input.split(",") for p in sorted(glob.glob(pattern))]
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "wb") as out:
            for _ in range(args.repeat):
                for p in files:
                    out.write(pathlib.Path(p).read_bytes().rstrip(b"\n") + b"\n\n")
        text = pathlib.Path(corpus).read_text(encoding="utf-8")
        lines = [line for line in text.split("\n") if line.strip()]
        mb = len(text.encode()) / 1e6

        raw = ByteLevelBPETokenizer(os.path.join(args.tokenizer, "vocab.json"),
                                    os.path.join(args.tokenizer, "merges.txt"))
        raw_times, raw_tokens = [], 0
        for _ in range(args.trials):
            start = time.perf_counter()
            encodings = raw.encode_batch(lines)
            raw_times.append(time.perf_counter() - start)
            raw_tokens = sum(len(e.ids) for e in encodings)

        tok = tokenizer_lib.load(args.tokenizer)
        path_times, tokens = [], 0
        for trial in range(args.trials):
            start = time.perf_counter()
            manifest = preprocess_lib.preprocess(corpus, tok, os.path.join(tmp, f"out{trial}"),
                                                 split_sentences=bool(args.split_sentences))
            path_times.append(time.perf_counter() - start)
            tokens = sum(s["tokens"] for s in manifest["splits"].values())

    raw_s, path_s = min(raw_times), min(path_times)
    print(f"input: {mb:.1f} MB, {len(lines):,} lines; threads: {args.threads or os.cpu_count()} "
          f"(cores: {os.cpu_count()}); best of {args.trials}")
    print(f"raw encode_batch (lines):       {raw_s:6.2f} s  {raw_tokens / raw_s:12,.0f} tokens/s  ({raw_tokens:,} tokens)")
    print(f"whole preprocessing path:       {path_s:6.2f} s  {tokens / path_s:12,.0f} tokens/s  ({tokens:,} tokens)")
    print(f"whole path / raw (time per token): {(path_s / tokens) / (raw_s / raw_tokens):.2f}x  (goal <= 1.5x)")


if __name__ == "__main__":
    main()
