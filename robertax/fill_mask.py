"""Fill in `<mask>`: a masked language model's likeliest tokens for the masked position, as
fairseq's `roberta.fill_mask(text, topk)` and transformers' "fill-mask" pipeline give them.

    python -m robertax.fill_mask --model=PATH [--topk=5] [--tokenizer=DIR] "TEXT <mask> TEXT" ...

PATH is any checkpoint robertax reads: a Hugging Face or fairseq RoBERTa, a robertax model dir,
or a pretraining workdir (its latest checkpoint). The tokenizer is the checkpoint's own (beside
a Hugging Face or fairseq model, in a model dir's tokenizer/, a pretraining run's corpus) unless
--tokenizer names one. Each text holds exactly one `<mask>`; as in RoBERTa's tokenizer it takes
the space before it ("is <mask>." -> ... "Ġis" <mask> "." ...). Each guess is a row with its
probability (the softmax over the vocabulary, float32), the token id, the token as text, and
the filled-in text, the fields transformers' pipeline returns.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robertax import cli
from robertax import tokenizer as tokenizer_lib
from robertax.model import RobertaForMaskedLM
from robertax.tasks import glue, starting_point

_BUCKET = 32  # texts are padded to a multiple of this many tokens (fewer compilations)


class FillMask:
    """A masked-LM checkpoint and its tokenizer, loaded once: `fill(text, topk)`."""

    def __init__(self, path: str, tokenizer: Optional[str] = None):
        self.config, params, self.tokenizer, _ = starting_point.load_for_inference(
            path, tokenizer, check_params=starting_point.require_mlm_head(path))
        self.params = {"encoder": params["encoder"], "mlm_head": params["mlm_head"]}
        module = RobertaForMaskedLM(self.config)

        @jax.jit
        def logprobs(params, ids, position):  # ids [1, L], position [1, 1] -> [V]
            logits = module.apply({"params": params}, ids, masked_positions=position)
            return jax.nn.log_softmax(logits[0, 0].astype(jnp.float32))

        self._logprobs = logprobs

    def fill(self, text: str, topk: int = 5) -> list[dict]:
        """The `topk` likeliest tokens at the text's one `<mask>`, likeliest first: dicts with
        `score` (probability), `token` (id), `token_str` and `sequence` (the text filled in,
        without <s> and </s>)."""
        tok = self.tokenizer
        if topk < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        ids = tok.encode(text)
        where = [i for i, t in enumerate(ids) if t == tok.mask_id]
        if len(where) != 1:
            raise ValueError(f"{text!r}: a text to fill needs exactly one {tokenizer_lib.MASK}, "
                             f"found {len(where)}")
        if len(ids) > self.config.max_length:
            raise ValueError(f"{text!r}: {len(ids)} tokens with <s> and </s>, more than the "
                             f"model's {self.config.max_length}")
        length = min(-(-len(ids) // _BUCKET) * _BUCKET, self.config.max_length)
        padded, _ = glue.pad([ids], length, tok.pad_id)  # pad positions attend nowhere
        with jax.default_matmul_precision("highest"):
            logp = np.asarray(self._logprobs(self.params, padded, np.array([where], np.int32)))
        best = np.argsort(-logp, kind="stable")[:topk]
        rows = []
        for t in best:
            filled = list(ids)
            filled[where[0]] = int(t)
            rows.append({"score": float(np.exp(logp[t])), "token": int(t),
                         "token_str": tok.decode([int(t)]),
                         "sequence": tok.decode(filled, skip_special_tokens=True)})
        return rows


def fill_mask(path: str, text: str, topk: int = 5, tokenizer: Optional[str] = None) -> list[dict]:
    """One text: `FillMask(path, tokenizer).fill(text, topk)`."""
    return FillMask(path, tokenizer).fill(text, topk)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robertax.fill_mask",
                                     description=__doc__.split("\n")[0])
    cli.add_model_args(parser, "a checkpoint: Hugging Face, fairseq, robertax model dir or "
                       "pretraining workdir")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("texts", nargs="+", help="texts with one <mask> each")
    args = parser.parse_args(argv)
    with cli.bad_input_exits():  # bad input: the message says what and where
        filler = FillMask(args.model, args.tokenizer)
        for text in args.texts:
            print(text)
            for row in filler.fill(text, args.topk):
                print(f"  {row['score']:.4f}  {row['token']:>6}  {row['token_str']!r:<16} "
                      f"{row['sequence']}")


if __name__ == "__main__":
    main(sys.argv[1:])
