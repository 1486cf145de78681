"""Look at exactly what the training pipeline feeds the model.

    python -m robertax.data.inspect --config=configs/tiny.py --num_batches=2 --epochs=2 \
        --output=/tmp/batches.npz --config.data.format=doc_sentences

Takes the first `num_batches` batches of each of `epochs` epochs of the pipeline the config
describes (host 0 of 1), prints a few decoded rows per batch with the masked positions shown as
`[original->shown]` (`[original]` when chosen but left unchanged), and with `--output` saves, over
all dumped rows: input_ids, original_ids, mlm_mask (bool, the positions the loss is computed on),
example_ids, epoch, and for the NSP formats nsp_labels ([rows, K]; packed rows list K inputs)
with nsp_weights (1 where slot k holds an input: count IsNext among those, the rest are 0).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from robertax.data import formats, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training config file.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 1, "Batches taken from the start of each epoch.")
_EPOCHS = flags.DEFINE_integer("epochs", 1, "Epochs to take batches from.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the dumped arrays to this .npz file.")
_SHOW = flags.DEFINE_integer("show", 2, "Rows printed per batch.")
_SPLIT = flags.DEFINE_string("split", "train", "Corpus split.")


def collect(config, shard_dir: str, num_batches: int, epochs: int, split: str = "train"):
    """The first `num_batches` batches of each epoch, as a list of (epoch, batch dict)."""
    B = config.batch_size
    examples = pipeline.make_examples(config.data, shard_dir, split, seed=config.data.seed,
                                      epochs=epochs, min_records=B)
    records = len(examples) // epochs
    take = min(num_batches, records // B) * B
    out = []
    for e in range(epochs):
        start = e * records
        batches = examples[start:start + take].batch(B, drop_remainder=True)
        out += [(e, batches[i]) for i in range(len(batches))]
    return out


def mlm_mask(batch) -> np.ndarray:
    """[B, L] bool: the positions the MLM loss is computed on."""
    mask = np.zeros(batch["input_ids"].shape, bool)
    rows = np.arange(len(mask))[:, None].repeat(batch["mlm_positions"].shape[1], 1)
    real = batch["mlm_weights"] > 0
    mask[rows[real], batch["mlm_positions"][real]] = True
    return mask


class Renderer:
    """Token ids -> text, with the tokenizer of the shards if it can be loaded, else ids."""

    def __init__(self, shard_dir: str, special_ids: dict):
        self.names = {int(v): f"<{k}>" for k, v in special_ids.items()}
        self.names[int(special_ids["bos"])] = "<s>"
        self.names[int(special_ids["eos"])] = "</s>"
        self.pad = int(special_ids["pad"])
        self.tok = None
        try:
            from robertax import tokenizer  # pylint: disable=import-outside-toplevel
            self.tok = tokenizer.load(os.path.join(shard_dir, "tokenizer"))
        except Exception as e:  # pylint: disable=broad-except
            print(f"(no tokenizer in {shard_dir}/tokenizer: {e}; showing token ids)")

    def text(self, ids) -> str:
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        if self.tok is None:
            return " ".join(self.names.get(i, str(i)) for i in ids)
        if len(ids) == 1 and ids[0] in self.names:
            return self.names[ids[0]]
        return self.tok.decode(ids)

    def row(self, original, shown, chosen) -> str:
        parts, run = [], []
        for o, s, c in zip(original, shown, chosen):
            if o == self.pad:
                break
            if not c and o not in self.names:
                run.append(o)
                continue
            parts.append(self.text(run))
            run = []
            if not c:
                parts.append(self.text([o]))
                continue
            # Leading whitespace stays outside the brackets so the text still reads.
            was = self.text([o])
            lead, was = was[:len(was) - len(was.lstrip())], was.strip() or was
            now = self.text([s]).strip() or self.text([s])
            parts.append(f"{lead}[{was}]" if s == o else f"{lead}[{was}->{now}]")
        parts.append(self.text(run))
        return "".join(p if self.tok is not None else p + " " for p in parts if p).strip()


def main(argv):
    del argv
    config = _CONFIG.value
    shard_dir = pipeline.resolve_shard_dir(config)
    batches = collect(config, shard_dir, _NUM_BATCHES.value, _EPOCHS.value, _SPLIT.value)
    from robertax.data import shards  # pylint: disable=import-outside-toplevel
    manifest = shards.read_manifest(shard_dir)
    render = Renderer(shard_dir, manifest["special_ids"])
    nsp = config.data.format in formats.PAIR_FORMATS
    print(f"{shard_dir} [{_SPLIT.value}]  format={config.data.format}  "
          f"masking={config.data.masking}/{config.data.mask_count}  "
          f"batch={config.batch_size}x{config.data.max_length}")
    dump = {k: [] for k in ("input_ids", "original_ids", "mlm_mask", "example_ids", "epoch")}
    if nsp:
        dump["nsp_labels"], dump["nsp_weights"] = [], []
    for b, (epoch, batch) in enumerate(batches):
        chosen = mlm_mask(batch)
        real = batch["original_ids"] != render.pad
        print(f"\n=== epoch {epoch} batch {b}: {real.sum()} tokens, {chosen.sum()} masked "
              f"({chosen.sum() / max(real.sum(), 1):.1%}), overflow {batch['mlm_overflow'].sum()}")
        for r in range(min(_SHOW.value, len(chosen))):
            segs = batch["segment_ids"][r]
            head = (f"--- example {batch['example_ids'][r]} (epoch {batch['epoch'][r]}), "
                    f"{segs.max()} input(s)")
            if nsp:
                w = batch["nsp_weights"][r] > 0
                head += f", nsp_labels {batch['nsp_labels'][r][w].tolist()} (1 = IsNext)"
            print(head)
            for k in range(1, segs.max() + 1):
                at = segs == k
                print(render.row(batch["original_ids"][r][at], batch["input_ids"][r][at],
                                 chosen[r][at]))
        dump["mlm_mask"].append(chosen)
        for key in dump:
            if key != "mlm_mask":
                dump[key].append(batch[key])
    if _OUTPUT.value:
        arrays = {k: np.concatenate(v) for k, v in dump.items()}
        np.savez(_OUTPUT.value, **arrays)
        print(f"\nwrote {len(arrays['input_ids'])} rows to {_OUTPUT.value}")


if __name__ == "__main__":
    sys.exit(app.run(main))
