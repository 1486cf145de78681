"""Which noun phrase does a pronoun refer to? Each candidate put in the pronoun's place with its
tokens masked, scored by the mean log-probability the masked LM gives them there: the Winograd
scoring of the paper's WNLI entry (Section 5.1; robertax/tasks/wsc.py), as fairseq's
`roberta.disambiguate_pronoun`.

    python -m robertax.pronoun --model=PATH \\
        "The trophy doesn't fit into the brown suitcase because [it] is too large." \\
        --candidates="the trophy,the brown suitcase"

The pronoun is in [brackets]; the candidates are --candidates (comma-separated) and every
_underscored_ phrase of the text (fairseq's mark for the query), markers removed. Prints each
candidate's score, best first. PATH and --tokenizer as for `robertax.fill_mask`; a model
fine-tuned with configs/finetune/wnli_wsc.py (its best/) is the one trained for this.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Optional, Sequence

import jax
import numpy as np

from robertax import cli
from robertax.model import RobertaForCandidateScoring
from robertax.tasks import starting_point, wsc

_BUCKET = 32  # texts are padded to a multiple of this many tokens (fewer compilations)


def parse(text: str) -> tuple[str, int, int, list[str]]:
    """(the text without markers, the pronoun's start and end in it, the _underscored_ phrases
    in order). Raises ValueError unless exactly one [pronoun] is marked."""
    clean, pronouns, marked, at = [], [], [], 0
    for m in re.finditer(r"\[([^\[\]]+)\]|_([^_]+)_", text):
        clean.append(text[at:m.start()])
        start = sum(map(len, clean))
        if m.group(1) is not None:
            pronouns.append((start, start + len(m.group(1))))
        else:
            marked.append(m.group(2))
        clean.append(m.group(1) if m.group(1) is not None else m.group(2))
        at = m.end()
    clean.append(text[at:])
    if len(pronouns) != 1:
        raise ValueError(f"{text!r}: mark exactly one pronoun in [brackets], found "
                         f"{len(pronouns)}")
    return "".join(clean), *pronouns[0], marked


class PronounResolver:
    """A masked-LM checkpoint and its tokenizer, loaded once: `scores(text, candidates)`."""

    def __init__(self, path: str, tokenizer: Optional[str] = None):
        self.config, params, self.tokenizer, _ = starting_point.load_for_inference(
            path, tokenizer, check_params=starting_point.require_mlm_head(path))
        self.params = {"encoder": params["encoder"], "mlm_head": params["mlm_head"]}
        self._score = jax.jit(RobertaForCandidateScoring(self.config).apply)

    def scores(self, text: str, candidates: Sequence[str] = ()) -> list[tuple[str, float]]:
        """(candidate, score) for the _underscored_ phrases of `text` and `candidates`, best
        first (a tie keeps their order); the pronoun is the text's one [marked] word."""
        clean, start, end, marked = parse(text)
        cands = list(dict.fromkeys([*marked, *(c.strip() for c in candidates if c.strip())]))
        if not cands:
            raise ValueError(f"{text!r}: no candidates (pass --candidates or mark them _so_)")
        schema = wsc.Schema(0, clean, start, end, cands[0], None)
        arrays = wsc.featurize([schema], [cands[1:]], self.tokenizer, self.config.max_length)
        longest = int(arrays["attention_mask"].sum(-1).max())
        length = min(-(-longest // _BUCKET) * _BUCKET, self.config.max_length)
        with jax.default_matmul_precision("highest"):
            got = np.asarray(self._score({"params": self.params},
                                         arrays["input_ids"][..., :length],
                                         arrays["attention_mask"][..., :length]))[0]
        order = np.argsort(-got, kind="stable")
        return [(cands[i], float(got[i])) for i in order]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robertax.pronoun",
                                     description=__doc__.split("\n")[0])
    cli.add_model_args(parser, "a checkpoint with the masked-LM head: Hugging Face, fairseq, "
                       "robertax model dir or pretraining workdir")
    parser.add_argument("--candidates", default="", help="comma-separated noun phrases, for "
                        "every text (beside each text's _marked_ ones)")
    parser.add_argument("texts", nargs="+", help="texts with one [pronoun] each")
    args = parser.parse_args(argv)
    with cli.bad_input_exits():  # bad input: the message says what and where
        resolver = PronounResolver(args.model, args.tokenizer)
        for text in args.texts:
            rows = resolver.scores(text, args.candidates.split(","))
            print(text)
            for k, (cand, score) in enumerate(rows):
                print(f"  {score:9.4f}  {cand}{'  <- the referent' if k == 0 else ''}")


if __name__ == "__main__":
    main(sys.argv[1:])
