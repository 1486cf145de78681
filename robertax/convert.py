"""Checkpoint conversion between robertax and PyTorch formats (Hugging Face; fairseq).

One table, `TABLE`, names every tensor in each format and how its layout differs; both
directions read it. Each format's files are read and written in its own module, through the
table: hf.py (config.json + safetensors, no PyTorch needed; `pytorch_model.bin` with
`torch.load(weights_only=True)`), fairseq.py (model.pt). This module holds the table, the
any-to-any `read` / `write` with the tokenizer and metadata that travel, and the CLI:

    python -m robertax.convert --src=hf_dir --dst=out_dir            # hf -> robertax
    python -m robertax.convert --src=ckpt_dir --dst=hf_dir --dst_format=hf
    python -m robertax.convert --src=roberta.base/model.pt --dst=out_dir   # fairseq (fairseq.py)
    python -m robertax.convert --src=ckpt_dir --dst=out/model.pt          # writes fairseq (.pt)

Layout differences (torch Linear stores (out, in); Flax kernels are (in, out)):
  linear   W[out, in]        -> kernel[in, out]
  qkv      W[N*K, D]         -> kernel[D, N, K];  bias[N*K] -> [N, K]
  attn_out W[D, N*K]         -> kernel[N, K, D]
  vocab    rows [V, ...]     -> rows [V_padded, ...] (zero rows appended; sliced on export)
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
from typing import Callable, NamedTuple

import numpy as np

from robertax import cli
from robertax.model import RobertaConfig


class Row(NamedTuple):
    ours: tuple  # path in robertax params; per-layer rows live under the stacked "layers"
    hf: str  # Hugging Face name ("{i}" = layer index); "" if absent in that format
    fairseq: str  # fairseq name, released layout ("" if absent)
    kind: str  # copy | linear | qkv_w | qkv_b | attn_out_w | vocab | vocab_bias | type_rows
    hf_choice: str = ""  # the name in HF's RobertaForMultipleChoice where it differs from `hf`


_E = ("encoder", "embed")
_Y = ("encoder", "layers")
_FS = "decoder.sentence_encoder"

TABLE: list[Row] = [
    # embeddings
    Row(_E + ("tokens", "embedding"), "roberta.embeddings.word_embeddings.weight",
        f"{_FS}.embed_tokens.weight", "vocab"),
    Row(_E + ("positions", "embedding"), "roberta.embeddings.position_embeddings.weight",
        f"{_FS}.embed_positions.weight", "copy"),
    Row(_E + ("types", "embedding"), "roberta.embeddings.token_type_embeddings.weight",
        "", "type_rows"),
    Row(_E + ("norm", "scale"), "roberta.embeddings.LayerNorm.weight",
        f"{_FS}.emb_layer_norm.weight", "copy"),
    Row(_E + ("norm", "bias"), "roberta.embeddings.LayerNorm.bias",
        f"{_FS}.emb_layer_norm.bias", "copy"),
    # one transformer layer (stacked over layers on our side)
    *[Row(_Y + ("attn", ours, kind[0]), f"roberta.encoder.layer.{{i}}.attention.self.{hf}.{kind[1]}",
          f"{_FS}.layers.{{i}}.self_attn.{fs}_proj.{kind[1]}", kind[2])
      for ours, hf, fs in (("query", "query", "q"), ("key", "key", "k"), ("value", "value", "v"))
      for kind in (("kernel", "weight", "qkv_w"), ("bias", "bias", "qkv_b"))],
    Row(_Y + ("attn", "out", "kernel"), "roberta.encoder.layer.{i}.attention.output.dense.weight",
        f"{_FS}.layers.{{i}}.self_attn.out_proj.weight", "attn_out_w"),
    Row(_Y + ("attn", "out", "bias"), "roberta.encoder.layer.{i}.attention.output.dense.bias",
        f"{_FS}.layers.{{i}}.self_attn.out_proj.bias", "copy"),
    Row(_Y + ("attn_norm", "scale"), "roberta.encoder.layer.{i}.attention.output.LayerNorm.weight",
        f"{_FS}.layers.{{i}}.self_attn_layer_norm.weight", "copy"),
    Row(_Y + ("attn_norm", "bias"), "roberta.encoder.layer.{i}.attention.output.LayerNorm.bias",
        f"{_FS}.layers.{{i}}.self_attn_layer_norm.bias", "copy"),
    Row(_Y + ("up", "kernel"), "roberta.encoder.layer.{i}.intermediate.dense.weight",
        f"{_FS}.layers.{{i}}.fc1.weight", "linear"),
    Row(_Y + ("up", "bias"), "roberta.encoder.layer.{i}.intermediate.dense.bias",
        f"{_FS}.layers.{{i}}.fc1.bias", "copy"),
    Row(_Y + ("down", "kernel"), "roberta.encoder.layer.{i}.output.dense.weight",
        f"{_FS}.layers.{{i}}.fc2.weight", "linear"),
    Row(_Y + ("down", "bias"), "roberta.encoder.layer.{i}.output.dense.bias",
        f"{_FS}.layers.{{i}}.fc2.bias", "copy"),
    Row(_Y + ("mlp_norm", "scale"), "roberta.encoder.layer.{i}.output.LayerNorm.weight",
        f"{_FS}.layers.{{i}}.final_layer_norm.weight", "copy"),
    Row(_Y + ("mlp_norm", "bias"), "roberta.encoder.layer.{i}.output.LayerNorm.bias",
        f"{_FS}.layers.{{i}}.final_layer_norm.bias", "copy"),
    # masked-LM head (its projection is the token table, so it has no row of its own)
    Row(("mlm_head", "dense", "kernel"), "lm_head.dense.weight", "decoder.lm_head.dense.weight",
        "linear"),
    Row(("mlm_head", "dense", "bias"), "lm_head.dense.bias", "decoder.lm_head.dense.bias", "copy"),
    Row(("mlm_head", "norm", "scale"), "lm_head.layer_norm.weight",
        "decoder.lm_head.layer_norm.weight", "copy"),
    Row(("mlm_head", "norm", "bias"), "lm_head.layer_norm.bias", "decoder.lm_head.layer_norm.bias",
        "copy"),
    Row(("mlm_head", "bias"), "lm_head.bias", "decoder.lm_head.bias", "vocab_bias"),
    # sentence classification head ("{h}" = the fairseq head's name, e.g. mnli). As RACE's
    # one-output scorer it is HF's RobertaForMultipleChoice: pooler (dense, tanh) + classifier.
    Row(("classifier", "dense", "kernel"), "classifier.dense.weight",
        "classification_heads.{h}.dense.weight", "linear", "roberta.pooler.dense.weight"),
    Row(("classifier", "dense", "bias"), "classifier.dense.bias",
        "classification_heads.{h}.dense.bias", "copy", "roberta.pooler.dense.bias"),
    Row(("classifier", "out", "kernel"), "classifier.out_proj.weight",
        "classification_heads.{h}.out_proj.weight", "linear", "classifier.weight"),
    Row(("classifier", "out", "bias"), "classifier.out_proj.bias",
        "classification_heads.{h}.out_proj.bias", "copy", "classifier.bias"),
    # SQuAD span head: HF's qa_outputs = Linear(D, 2), output 0 the start logit, 1 the end
    # (ours: kernel [D, 2], column 0 start). fairseq has no such head.
    Row(("span", "kernel"), "qa_outputs.weight", "", "linear"),
    Row(("span", "bias"), "qa_outputs.bias", "", "copy"),
]

HEADS = ("mlm_head", "classifier", "span")
# robertax_config.json keys that describe the model's head and travel with it between formats
# ("task", "labels", "num_labels", "num_choices", "squad_version" are fine-tuning's own;
# "finetuning_task" is a Hugging Face config.json's, kept as written there).
META_KEYS = ("task", "labels", "num_labels", "num_choices", "squad_version", "fairseq_head",
             "multiple_choice", "finetuning_task")


# --- layout transforms: (torch tensor, config) -> ours, and back ---------------------------

def _to_ours(kind: str, t: np.ndarray, c: RobertaConfig) -> np.ndarray:
    N, K, D = c.num_heads, c.head_dim, c.hidden_size
    if kind in ("copy", "type_rows"):
        return t
    if kind == "linear":
        return t.T
    if kind == "qkv_w":
        return t.T.reshape(D, N, K)
    if kind == "qkv_b":
        return t.reshape(N, K)
    if kind == "attn_out_w":
        return t.T.reshape(N, K, D)
    if kind in ("vocab", "vocab_bias"):
        pad = c.padded_vocab_size - t.shape[0]
        return np.concatenate([t, np.zeros((pad, *t.shape[1:]), t.dtype)]) if pad else t
    raise ValueError(kind)


def _from_ours(kind: str, a: np.ndarray, c: RobertaConfig) -> np.ndarray:
    N, K, D = c.num_heads, c.head_dim, c.hidden_size
    if kind in ("copy", "type_rows"):
        return a
    if kind == "linear":
        return a.T
    if kind == "qkv_w":
        return a.reshape(D, N * K).T
    if kind == "qkv_b":
        return a.reshape(N * K)
    if kind == "attn_out_w":
        return a.reshape(N * K, D).T
    if kind in ("vocab", "vocab_bias"):
        return a[: c.vocab_size]
    raise ValueError(kind)


def _expected_shape(row: Row, c: RobertaConfig, num_labels: int | None) -> tuple:
    """Shape of the tensor as the PyTorch side stores it."""
    D, F, V = c.hidden_size, c.intermediate_size, c.vocab_size
    name = row.ours
    shapes = {
        ("tokens", "embedding"): (V, D), ("positions", "embedding"): (c.max_position_embeddings, D),
        ("types", "embedding"): (c.type_vocab_size, D), ("mlm_head", "bias"): (V,),
    }
    if name[-2:] in shapes:
        return shapes[name[-2:]]
    if name[0] == "span":
        return {"kernel": (2, D), "bias": (2,)}[name[-1]]
    if name[0] == "classifier":
        out = {("dense", "kernel"): (D, D), ("dense", "bias"): (D,),
               ("out", "kernel"): (num_labels, D), ("out", "bias"): (num_labels,)}
        return out[name[-2:]]
    if row.kind in ("qkv_w", "attn_out_w") or name[-2:] == ("dense", "kernel"):
        return (D, D)
    if row.kind == "qkv_b" or name[-1] in ("bias", "scale"):
        return (F,) if name[-2] == "up" else (D,)
    return {"up": (F, D), "down": (D, F)}[name[-2]]


def _set(tree: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple):
    for k in path:
        tree = tree[k]
    return tree


def _has(tree: dict, path: tuple) -> bool:
    try:
        _get(tree, path)
        return True
    except (KeyError, TypeError):
        return False


# --- generic table-driven import / export ------------------------------------------------

def tensors_to_params(tensors: dict[str, np.ndarray], c: RobertaConfig, name_of: Callable[[Row], str],
                      source: str, num_labels: int | None = None,
                      derived: tuple = ()) -> dict:
    """Builds robertax params from named PyTorch-layout tensors, checking every name and shape.

    `name_of(row)` gives the row's name in the source format (with "{i}" for the layer).
    Heads are taken when their tensors are present. Tensors no row consumes are reported.
    """
    params: dict = {}
    used = set()
    for row in TABLE:
        template = name_of(row)
        if not template:
            if row.kind == "type_rows":  # fairseq has no token types: RoBERTa's row is zero
                _set(params, row.ours, np.zeros((c.type_vocab_size, c.hidden_size), np.float32))
            continue
        head = row.ours[0] if row.ours[0] in HEADS else None
        if head and template.replace("{i}", "0") not in tensors:
            continue
        per_layer = "{i}" in template
        names = [template.format(i=i) for i in range(c.num_layers)] if per_layer else [template]
        arrays = []
        for name in names:
            if name not in tensors:
                raise KeyError(f"{source}: missing tensor {name!r} (needed for "
                               f"{'/'.join(row.ours)})")
            t = np.asarray(tensors[name])
            want = _expected_shape(row, c, num_labels)
            if tuple(t.shape) != tuple(want):
                raise ValueError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(want)} for this config")
            arrays.append(_to_ours(row.kind, t.astype(np.float32), c))
            used.add(name)
        _set(params, row.ours, np.stack(arrays) if per_layer else arrays[0])
    extra = sorted(set(tensors) - used - set(derived))
    if extra:
        logging.warning("%s: %d tensor(s) not used by robertax: %s", source, len(extra), extra)
    return params


def params_to_tensors(params: dict, c: RobertaConfig, name_of: Callable[[Row], str],
                      dtype=np.float32, dest: str = "") -> dict[str, np.ndarray]:
    """PyTorch-layout tensors by name. Top-level params (heads) that have no row in the
    destination format (e.g. SQuAD v2's "answerable", an "nsp_head") are left out with a warning."""
    written = {row.ours[0] for row in TABLE if name_of(row)}
    dropped = sorted(k for k in params if k not in written)
    if dropped:
        logging.warning("%s has no place for %s: not written (the converted model lacks %s)",
                        dest or "the destination format", dropped,
                        "this head" if len(dropped) == 1 else "these heads")
    out = {}
    for row in TABLE:
        template = name_of(row)
        if not template or not _has(params, row.ours):
            continue
        a = np.asarray(_get(params, row.ours))
        if "{i}" in template:
            for i in range(c.num_layers):
                out[template.format(i=i)] = _from_ours(row.kind, a[i], c).astype(dtype)
        else:
            out[template] = _from_ours(row.kind, a, c).astype(dtype)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _to_numpy(params) -> dict:
    import flax.linen as nn
    import jax
    return jax.tree.map(np.asarray, nn.unbox(params))


# Hugging Face directory I/O lives in hf.py (as fairseq's in fairseq.py); these names of it
# are part of this module's public API too: `convert.from_hf(path)`, `convert.to_hf(...)`.
_HF_API = ("from_hf", "to_hf", "read_hf", "hf_config", "hf_config_to_ours", "hf_weights_file")


def __getattr__(name: str):
    if name in _HF_API:
        from robertax import hf
        return getattr(hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HF_API])


# --- any format to any format -------------------------------------------------------------

def detect_format(path: str) -> str:
    from robertax import checkpoint, hf
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    if os.path.isfile(path) and path.endswith(".pt"):
        return "fairseq"
    if os.path.exists(os.path.join(path, "model.pt")):
        return "fairseq"
    if os.path.exists(os.path.join(path, "config.json")) and hf.hf_weights_file(path):
        return "hf"
    if (checkpoint.is_model_dir(path) or checkpoint.is_train_dir(path)
            or checkpoint.is_finetune_dir(path)):
        return "robertax"
    raise ValueError(f"{path}: cannot tell its format (expected a Hugging Face dir with "
                     "config.json + model.safetensors (or pytorch_model.bin, or a sharded "
                     "*.index.json), a fairseq model.pt, or a robertax model dir, pretraining "
                     "workdir or fine-tuning workdir with best/)")


def tokenizer_dir(source: str, fmt: str) -> str:
    """Where the tokenizer of a checkpoint lives: beside a Hugging Face or fairseq model
    (vocab.json + merges.txt or tokenizer.json; encoder.json + vocab.bpe + dict.txt), in a
    robertax model dir's tokenizer/ (a fine-tuning workdir's best/tokenizer/), or with a
    pretraining run's corpus shards."""
    from robertax import checkpoint
    if fmt in ("hf", "fairseq"):
        return source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    source = checkpoint.model_dir(source)
    if checkpoint.is_model_dir(source):
        path = os.path.join(source, "tokenizer")
        if os.path.isdir(path):
            return path
        raise FileNotFoundError(f"{source}: a robertax model dir without tokenizer/")
    if checkpoint.is_train_dir(source):
        import ml_collections
        from robertax.data import pipeline
        with open(os.path.join(source, "config.json")) as f:
            run_config = ml_collections.ConfigDict(json.load(f))
        try:
            return pipeline.tokenizer_path(run_config)
        except (FileNotFoundError, ValueError) as e:
            raise FileNotFoundError(f"{source}/config.json: cannot find the pretraining corpus "
                                    f"to take its tokenizer from ({e})") from None
    raise ValueError(f"{source}: cannot tell which tokenizer belongs to this {fmt} checkpoint")


def _tokenizer_plan(src: str, src_fmt: str, dst: str, dst_fmt: str, vocab_size: int):
    """What the CLI does with the tokenizer: (the source's tokenizer to save or None, where,
    why not). Refuses, before anything is written, a destination that holds a tokenizer other
    than the source's, or (with none to carry) one that does not fit the model."""
    from robertax import tokenizer as tokenizer_lib
    out = {"robertax": os.path.join(dst, "tokenizer"), "hf": dst}.get(dst_fmt)
    tok, why = None, ""
    if out is None:
        why = ("fairseq keeps GPT-2's encoder.json and vocab.bpe beside dict.txt; copy those "
               "from the original release")
    else:
        try:
            tok = tokenizer_lib.load(tokenizer_dir(src, src_fmt))
        except (FileNotFoundError, ValueError) as e:
            why = f"no tokenizer found for the source ({e})"
        if tok is not None and tok.vocab_size != vocab_size:
            tok, why = None, (f"the one found for the source has {tok.vocab_size} tokens, the "
                              f"model {vocab_size}")
    names = ("vocab.json", "merges.txt", "tokenizer.json", tokenizer_lib.SPM_FILE,
             tokenizer_lib.CONFIG_FILE)
    if out is not None and any(os.path.exists(os.path.join(out, n)) for n in names):
        try:
            there = tokenizer_lib.load(out)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{out} holds tokenizer files that do not load ({e}); not "
                             "overwriting them (move them away)") from None
        if tok is not None and there.fingerprint != tok.fingerprint:
            raise ValueError(f"{out} already holds a different tokenizer than the source's; "
                             "not overwriting it (move it away)")
        if tok is None and there.vocab_size != vocab_size:
            raise ValueError(f"{out} holds a tokenizer of {there.vocab_size} tokens and the "
                             f"model has {vocab_size}, so it does not fit the converted model; "
                             f"not writing beside it (move it away). No tokenizer to carry: "
                             f"{why}")
    return tok, out, why


def read_with_meta(path: str, fmt: str | None = None, *, trusted: bool = False,
                   head: str | None = None) -> tuple[RobertaConfig, dict, dict]:
    """`read`, plus the metadata that travels with the model (`META_KEYS`: label names, the
    task, the fairseq head's name, ...)."""
    fmt = fmt or detect_format(path)
    if fmt == "hf":
        from robertax import hf
        return hf.read_hf(path)
    if fmt == "robertax":
        from robertax import checkpoint
        config, params, meta = checkpoint.load_model(path)
        return config, params, {k: meta[k] for k in META_KEYS if k in meta}
    if fmt == "fairseq":
        from robertax import fairseq
        return fairseq.read_fairseq(path, trusted=trusted, head=head)
    raise ValueError(f"unknown format {fmt!r}: use hf, fairseq or robertax")


def read(path: str, fmt: str | None = None, *, trusted: bool = False,
         head: str | None = None) -> tuple[RobertaConfig, dict]:
    """`trusted` (unrestricted unpickling) and `head` (which classification head) are for
    fairseq's model.pt."""
    config, params, _ = read_with_meta(path, fmt, trusted=trusted, head=head)
    return config, params


def write(config: RobertaConfig, params: dict, path: str, fmt: str, *, head: str | None = None,
          dictionary: str | None = None, meta: dict | None = None) -> None:
    """`dictionary`: a fairseq dict.txt that travels with the model (copied beside it), so a
    later conversion to fairseq finds it; `head` names the fairseq classification head
    (default: meta's "fairseq_head"); `meta`: what `read_with_meta` returned (label names, ...)."""
    meta = dict(meta or {})
    copy = os.path.join(path, "dict.txt")
    if dictionary and fmt != "fairseq" and os.path.exists(copy) and not filecmp.cmp(
            dictionary, copy, shallow=False):
        raise ValueError(f"{copy} already exists and differs from the model's dictionary "
                         f"{dictionary}; not overwriting it (move it away)")
    if fmt == "hf":
        from robertax import hf
        hf.to_hf(config, params, path, meta=meta)
    elif fmt == "robertax":
        from robertax import checkpoint
        checkpoint.save_model(path, config, _to_numpy(params), meta or None)
    elif fmt == "fairseq":
        from robertax import fairseq
        fairseq.to_fairseq(config, params, path, head=head or meta.get("fairseq_head"),
                           dictionary=dictionary)
    else:
        raise ValueError(f"unknown format {fmt!r}: use hf, fairseq or robertax")
    if dictionary and fmt != "fairseq" and os.path.abspath(dictionary) != os.path.abspath(copy):
        import shutil
        shutil.copyfile(dictionary, copy)


def main(argv=None) -> None:
    """The CLI's work; bad input raises (see `_cli` for the one-line errors)."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m robertax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--src_format", choices=("hf", "fairseq", "robertax"))
    parser.add_argument("--dst_format", choices=("hf", "fairseq", "robertax"),
                        help="default: fairseq for a --dst ending in .pt, else robertax (hf "
                             "when the source is robertax)")
    parser.add_argument("--trust_pickle", action="store_true",
                        help="fairseq: unpickle model.pt without restrictions (runs code the "
                             "file names; only for files you trust)")
    parser.add_argument("--fairseq_head", help="fairseq: the classification head to read "
                        "(when there are several) / the name to write it under (default: the "
                        "name it was read under)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.src):
        raise FileNotFoundError(f"--src={args.src} does not exist")
    try:
        src_format = args.src_format or detect_format(args.src)
    except ValueError as e:
        raise ValueError(f"{e}; pass --src_format") from None
    dst_format = args.dst_format or ("fairseq" if args.dst.endswith(".pt") else
                                     "robertax" if src_format != "robertax" else "hf")
    config, params, meta = read_with_meta(args.src, src_format, trusted=args.trust_pickle,
                                          head=args.fairseq_head)
    tok, tok_dst, why = _tokenizer_plan(args.src, src_format, args.dst, dst_format,
                                        config.vocab_size)
    from robertax import fairseq
    from robertax import tokenizer as tokenizer_lib
    write(config, params, args.dst, dst_format, head=args.fairseq_head,
          dictionary=fairseq.find_dictionary(args.src), meta=meta)
    if tok is None:
        logging.warning("%s: tokenizer not written: %s", args.dst, why)
    elif dst_format == "hf" and isinstance(tok, tokenizer_lib.ByteBPETokenizer):
        tok.save_for_transformers(tok_dst, model_max_length=config.max_length)
    else:
        if dst_format == "hf":
            logging.warning("%s: the sentencepiece tokenizer is saved for robertax (%s); "
                            "transformers' RobertaTokenizer, a byte-level BPE, cannot use it",
                            tok_dst, tokenizer_lib.SPM_FILE)
        tok.save(tok_dst)
    from robertax.model import count_params
    n = count_params(params, config)  # the vocabulary's padding rows not counted
    heads = [h for h in params if h != "encoder"]
    print(f"{args.src} ({src_format}) -> {args.dst} ({dst_format}): {config.num_layers} layers, "
          f"hidden {config.hidden_size}, vocab {config.vocab_size}, heads {heads}, "
          f"{n:,} parameters" + (f"; tokenizer -> {tok_dst}" if tok is not None else ""))


def _cli(argv=None) -> None:
    """`main` for the shell: bad input is one line, "error: ...", and exit status 1 (argparse's
    usage errors: 2), not a traceback."""
    import pickle
    with cli.bad_input_exits(pickle.UnpicklingError):
        main(argv)


if __name__ == "__main__":
    _cli()
