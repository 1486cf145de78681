"""Does the pretrained encoder already know the task? A linear probe on frozen features.

Fine-tuning results at CPU scale are noisy: a tiny model trained from random weights learns
SST-2's words directly and lands within a point or two of the pretrained one. This tool asks a
cleaner question: with the encoder frozen, how well does a logistic regression on its last-layer
features do, for the checkpoint and for the same architecture with random weights?

    python tools/feature_probe.py --init_checkpoint=PATH [--config=configs/finetune/sst2.py] \
        [--train_examples=1000] [--data_dir=GLUE_DIR] [--output=probe.json]

Features: the `<s>` vector (what RoBERTa's classification head reads) and the mean over the real
tokens. The regularization strength is chosen by 5-fold cross-validation on the training subset
(scikit-learn's LogisticRegressionCV), then the dev set is scored once. Training subset and
tokenization are exactly robertax.finetune's (`finetune.prepare`), so the numbers sit beside a
fine-tuning run with the same flags. Single-sentence and pair classification tasks of GLUE.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("ROBERTAX_TEST_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from glue_sweep import load_config as _load_config  # noqa: E402  (this folder)

from robertax import finetune, model  # noqa: E402


def load_config(path: str, **overrides):
    """A fine-tuning config file's get_config() with `overrides` set."""
    config = _load_config(path)
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


def features(model_config, encoder_params, arrays, batch_size: int = 256):
    """Last-layer `<s>` vectors and mean-pooled vectors over the real tokens: two [N, H] arrays
    (rows with weight 0, the loop's padding, are dropped)."""
    enc = model.Encoder(model_config)

    @jax.jit
    def run(ids, mask):
        h = enc.apply({"params": encoder_params}, ids, mask).astype(jnp.float32)
        m = mask[..., None].astype(jnp.float32)
        return h[:, 0], (h * m).sum(1) / m.sum(1)

    keep = arrays["weight"] > 0
    ids, mask = arrays["input_ids"][keep], arrays["attention_mask"][keep]
    outs = [run(ids[i:i + batch_size], mask[i:i + batch_size])
            for i in range(0, len(ids), batch_size)]
    return (np.concatenate([np.asarray(o[0]) for o in outs]),
            np.concatenate([np.asarray(o[1]) for o in outs]))


def fit_and_score(x_train, y_train, x_dev, y_dev, seed: int = 0) -> dict:
    import inspect

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(x_train)
    # plain L2 and the simplified fitted attributes, said explicitly where scikit-learn (1.9+)
    # warns that their defaults change; the same fit either way
    params = inspect.signature(LogisticRegressionCV).parameters
    extra = {k: v for k, v in (("l1_ratios", (0.0,)), ("use_legacy_attributes", False))
             if k in params}
    clf = LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1, 10], cv=5, max_iter=3000, scoring="accuracy",
                               random_state=seed, **extra).fit(scaler.transform(x_train), y_train)
    return {"dev_accuracy": float(clf.score(scaler.transform(x_dev), y_dev)),
            "train_accuracy": float(clf.score(scaler.transform(x_train), y_train)),
            "C": float(np.ravel(clf.C_)[0])}


def probe(config) -> dict:
    """Probe results for config.init_checkpoint and for random weights (same model, tokenizer)."""
    results = {}
    for name, random_init in (("pretrained", False), ("random init", True)):
        with config.unlocked():
            config.random_init = random_init
        p = finetune.prepare(config)
        if getattr(p.task, "num_labels", 0) < 2:
            raise ValueError(f"{p.task.name}: not a classification task; the probe needs class "
                             "labels (GLUE's classification tasks)")
        (dev,) = [es for es in p.eval_sets if es.name == ""]
        tr = features(p.model_config, p.params["encoder"], p.train)
        dv = features(p.model_config, p.params["encoder"], dev.arrays)
        # Both initializations read the same examples: labels from either run.
        y_train = p.train["labels"][p.train["weight"] > 0]
        y_dev = dev.arrays["labels"][dev.arrays["weight"] > 0]
        results[name] = {kind: fit_and_score(a, y_train, b, y_dev, config.seed)
                         for kind, a, b in (("<s>", tr[0], dv[0]), ("mean", tr[1], dv[1]))}
    majority = collections.Counter(y_train.tolist()).most_common(1)[0][0]
    results["majority"] = float(np.mean(y_dev == majority))
    results["task"], results["train_examples"] = p.task.name, int(len(y_train))
    results["dev_examples"] = int(len(y_dev))
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init_checkpoint", required=True)
    ap.add_argument("--config", default=os.path.join(REPO, "configs", "finetune", "sst2.py"))
    ap.add_argument("--data_dir", default=os.path.join(DATA, "glue"))
    ap.add_argument("--train_examples", type=int, default=1000)
    ap.add_argument("--max_length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="")
    args = ap.parse_args(argv)
    config = load_config(args.config, init_checkpoint=args.init_checkpoint,
                         data_dir=args.data_dir, max_train_examples=args.train_examples,
                         max_length=args.max_length, seed=args.seed, precision="float32")
    r = probe(config)
    print(f"{r['task']}: logistic regression on frozen last-layer features, "
          f"{r['train_examples']} training examples, dev {r['dev_examples']}")
    for name in ("pretrained", "random init"):
        for kind in ("<s>", "mean"):
            s = r[name][kind]
            print(f"  {name:<12} {kind:<5} dev accuracy {s['dev_accuracy']:.4f}   "
                  f"(train {s['train_accuracy']:.4f}, C {s['C']:g})")
    print(f"  majority class     dev accuracy {r['majority']:.4f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
