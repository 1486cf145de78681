"""Extract features: an encoder's hidden states for texts, as fairseq's
`roberta.extract_features(tokens, return_all_hiddens=...)` and transformers'
`RobertaModel(..., output_hidden_states=True)` give them.

    python -m robertax.features --model=PATH [--tokenizer=DIR] [--all_layers]
        (--input=FILE | TEXT ...) --output=FEATURES.npz

PATH is any checkpoint robertax reads (a Hugging Face or fairseq RoBERTa, a robertax model dir,
a pretraining or fine-tuning workdir); the tokenizer is the checkpoint's own unless --tokenizer
names one. Each text (a command-line argument, or a line of --input) is encoded as RoBERTa
encodes one segment, `<s> text </s>`; texts run in batches, where padding attends nowhere and
is attended by nothing, so a text's features do not depend on its batch (float32).
The .npz holds `features` (float32: [N, T, D] the last layer, or with --all_layers
[N, num_layers + 1, T, D], the embeddings' output first), `input_ids` [N, T] (padded with the
pad id past each text's end) and `lengths` [N]; T is the longest text's length.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import jax
import numpy as np

from robertax import cli
from robertax.model import Encoder, hidden_states
from robertax.tasks import glue, starting_point

class Features:
    """An encoder checkpoint and its tokenizer, loaded once: `extract(texts, all_layers)`."""

    def __init__(self, path: str, tokenizer: Optional[str] = None):
        self.config, params, self.tokenizer, _ = starting_point.load_for_inference(path, tokenizer)
        self.params = params["encoder"]
        encoder = Encoder(self.config)
        self._last = jax.jit(lambda p, ids: encoder.apply({"params": p}, ids))
        self._all = jax.jit(lambda p, ids: hidden_states(self.config, p, ids))

    def encode(self, text: str, where: str = "") -> list[int]:
        """The text's ids, `<s> text </s>`; too long a text is refused, naming `where`."""
        ids = self.tokenizer.encode(text)
        if len(ids) > self.config.max_length:
            raise ValueError(f"{where or repr(text[:40])}: {len(ids)} tokens with <s> and </s>, "
                             f"more than the model's {self.config.max_length}")
        return ids

    def extract(self, texts: Sequence[str], all_layers: bool = False, batch_size: int = 32,
                where: Optional[Sequence[str]] = None) -> list[np.ndarray]:
        """Each text's features, float32: [T_i, D] (the last layer) or, with all_layers,
        [num_layers + 1, T_i, D]. `where` names each text in errors (say, FILE:LINE)."""
        ids = [self.encode(t, where[i] if where else "") for i, t in enumerate(texts)]
        return self.extract_ids(ids, all_layers, batch_size)

    def extract_ids(self, ids: Sequence[Sequence[int]], all_layers: bool = False,
                    batch_size: int = 32) -> list[np.ndarray]:
        """`extract` for texts already encoded (`encode`)."""
        out: list[Optional[np.ndarray]] = [None] * len(ids)
        run = self._all if all_layers else self._last
        for rows, padded, _ in starting_point.inference_batches(
                ids, batch_size, self.config.max_length, self.tokenizer.pad_id):
            with jax.default_matmul_precision("highest"):
                h = np.asarray(run(self.params, padded), np.float32)
            for r, i in enumerate(rows):  # [.., B, L, D] -> this row's real tokens
                out[i] = h[..., r, :len(ids[i]), :]
        return out


def save(path: str, features: Sequence[np.ndarray], ids: Sequence[Sequence[int]],
         pad_id: int) -> None:
    """The arrays the module docstring names, padded to the longest text."""
    longest = max(len(i) for i in ids)
    lead = features[0].shape[:-2]
    out = np.zeros((len(features), *lead, longest, features[0].shape[-1]), np.float32)
    for n, (f, i) in enumerate(zip(features, ids)):
        out[n, ..., :len(i), :] = f
    input_ids, _ = glue.pad(ids, longest, pad_id)
    np.savez(path, features=out, input_ids=input_ids,
             lengths=np.array([len(i) for i in ids], np.int32))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robertax.features",
                                     description=__doc__.split("\n")[0])
    cli.add_model_args(parser, "a checkpoint: Hugging Face, fairseq, robertax model dir or "
                       "workdir")
    parser.add_argument("--input", default=None, help="a text file, one text a line")
    parser.add_argument("--output", required=True, help="the .npz to write")
    parser.add_argument("--all_layers", action="store_true", help="every layer's output, the "
                        "embeddings' first (default: the last layer's)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("texts", nargs="*", help="texts (or --input)")
    args = parser.parse_args(argv)
    with cli.bad_input_exits():  # bad input: the message says what and where
        texts, where = cli.texts_from(args.input, args.texts)
        extractor = Features(args.model, args.tokenizer)
        ids = [extractor.encode(t, w) for t, w in zip(texts, where)]
        feats = extractor.extract_ids(ids, args.all_layers, args.batch_size)
        save(args.output, feats, ids, extractor.tokenizer.pad_id)
    shape = "N, layers + 1, T, D" if args.all_layers else "N, T, D"
    print(f"{len(texts)} text{'s' if len(texts) != 1 else ''}, features [{shape}] = "
          f"{[len(texts), *feats[0].shape[:-2], max(map(len, ids)), feats[0].shape[-1]]}, "
          f"written to {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
