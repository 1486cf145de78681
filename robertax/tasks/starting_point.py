"""What a fine-tuning run starts from: the checkpoint (any format robertax reads), the
tokenizer that belongs to it, and which of its heads the task keeps.

A head is kept (config.head="auto") when it was trained for this task and has the task's
shapes, its output units put in the task's label order where the checkpoint names its labels;
otherwise the task gets a fresh head, and the log says why. `finetune.prepare` calls these.
"""

from __future__ import annotations

import os
import re

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from flax import traverse_util

from robertax import checkpoint, convert
from robertax import tokenizer as tokenizer_lib
from robertax.model import RobertaConfig
from robertax.tasks import glue


def load_checkpoint(path: str) -> tuple[RobertaConfig, dict, dict, str]:
    """(model config, numpy params, metadata, format) of any checkpoint robertax reads."""
    if not path:
        raise ValueError("config.init_checkpoint is empty: give a robertax model dir, a "
                         "pretraining workdir or a Hugging Face dir")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.init_checkpoint={path!r} does not exist")
    fmt = convert.detect_format(path)
    if fmt == "robertax":
        mc, params, meta = checkpoint.load_model(path)
    else:
        mc, params, meta = convert.read_with_meta(path, fmt)  # label names, fairseq head
    return mc, jax.tree.map(np.asarray, nn.unbox(params)), meta, fmt


def tokenizer_path(config, source: str, fmt: str) -> str:
    """Where the tokenizer for `source` lives (config.tokenizer wins)."""
    if config.tokenizer:
        return config.tokenizer
    try:
        return convert.tokenizer_dir(source, fmt)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{e}; set config.tokenizer") from None


def load_tokenizer(config, source: str, fmt: str):
    path = tokenizer_path(config, source, fmt)
    try:
        return tokenizer_lib.load(path), path
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"tokenizer for {source}: {e} (set config.tokenizer)") from None


def check_vocab(mc: RobertaConfig, tok, source: str, tok_path: str) -> None:
    if tok.vocab_size != mc.vocab_size:
        raise ValueError(f"vocabulary mismatch: the checkpoint {source} has vocab_size "
                         f"{mc.vocab_size} but the tokenizer {tok_path} has {tok.vocab_size} "
                         "tokens; pass the tokenizer the model was trained with (config.tokenizer)")


def load_for_inference(path: str, tokenizer: str | None = None, check_params=None):
    """(config, numpy params, tokenizer, metadata) of any checkpoint robertax reads, for
    inference (`fill_mask`, `features`, `classify`): the config computes in float32 without
    dropout, and the tokenizer is the checkpoint's own unless `tokenizer` names one (its
    vocabulary checked). check_params(params, metadata) may refuse the checkpoint before its
    tokenizer is looked for."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    config, params, meta, fmt = load_checkpoint(path)
    if check_params is not None:
        check_params(params, meta)
    tok_path = tokenizer or convert.tokenizer_dir(path, fmt)
    tok = tokenizer_lib.load(tok_path)
    check_vocab(config, tok, path, tok_path)
    config = config.replace(dtype=jax.numpy.float32, dropout_rate=0.0,
                            attention_dropout_rate=0.0)
    return config, params, tok, meta


def require_mlm_head(path: str):
    """A `check_params` for `load_for_inference` (or called on loaded params) that refuses a
    checkpoint without the masked-LM head (mlm_head), naming what it holds."""
    def check(params, meta=None):
        if "mlm_head" not in params:
            raise ValueError(f"{path}: no masked-LM head (mlm_head) in this checkpoint (it "
                             f"has {sorted(params)}); a model fine-tuned for a classification "
                             "task has none, its pretrained starting point (or a Hugging Face "
                             "RobertaForMaskedLM) has it")
    return check


def inference_batches(ids, batch_size: int, max_length: int, pad_id: int, bucket: int = 32):
    """Yields (rows, input_ids, attention_mask): the id lists (indices `rows`) in batches of
    similar lengths, each padded to a multiple of `bucket` tokens (fewer compilations), at
    most `max_length`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        longest = max(len(ids[i]) for i in rows)
        length = min(-(-longest // bucket) * bucket, max_length)
        input_ids, mask = glue.pad([ids[i] for i in rows], length, pad_id)
        yield rows, input_ids, mask


def merge_params(shapes: dict, fresh_heads: dict, loaded: dict, head_names, *,
                 keep_heads: bool, source: str, fresh_reason: str = "config.head='fresh'",
                 require_heads: bool = False) -> dict:
    """The loaded encoder (checked against the model's `shapes`), and each head loaded when
    allowed (`keep_heads`, else `fresh_reason` says why not) and shaped alike, else freshly
    initialized; with `require_heads` a head that cannot be loaded is an error."""
    if "encoder" not in loaded:
        raise KeyError(f"{source}: no 'encoder' parameters (found {sorted(loaded)})")
    want = traverse_util.flatten_dict(shapes["encoder"], sep="/")
    have = traverse_util.flatten_dict(loaded["encoder"], sep="/")
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise KeyError(f"{source}: encoder parameters differ from the model's: missing "
                       f"{missing[:5]}, unexpected {extra[:5]}")
    for k in want:
        if tuple(want[k].shape) != tuple(np.shape(have[k])):
            raise ValueError(f"{source}: encoder/{k} has shape {tuple(np.shape(have[k]))}, the "
                             f"model expects {tuple(want[k].shape)}")
    out = {"encoder": loaded["encoder"]}
    shape_of = lambda t: jax.tree.map(np.shape, t)  # noqa: E731
    for head in head_names:
        reason = None  # why the checkpoint's head is not used
        if head not in loaded:
            reason = f"the checkpoint has no {head!r} head"
        elif not keep_heads:
            reason = fresh_reason
        elif shape_of(loaded[head]) != shape_of(shapes[head]):
            reason = (f"the checkpoint's has shapes {shape_of(loaded[head])}, the task needs "
                      f"{shape_of(shapes[head])}")
        if reason and require_heads:
            raise ValueError(f"config.do_train=False evaluates {source} as it is, but its "
                             f"{head!r} head cannot be used: {reason}. An untrained head "
                             "scores nothing: fine-tune first, or pass a model fine-tuned on "
                             "this task")
        out[head] = fresh_heads[head] if reason else loaded[head]
        logging.info("head %r: %s", head, f"new ({reason})" if reason else f"loaded from {source}")
    return out


def head_origin(meta: dict) -> tuple[str | None, list[str] | None]:
    """(task, label names in class order) the checkpoint's head was fine-tuned for, where its
    metadata says: robertax's "task" and "labels", or a Hugging Face config.json's
    "finetuning_task" and id2label as `convert.read_hf` returned them."""
    task, labels = meta.get("task") or meta.get("finetuning_task"), meta.get("labels")
    return (str(task) if task else None), ([str(x) for x in labels] if labels else None)


def _task_key(name: str) -> str:
    """A task name in one spelling: "sst2" -> "SST-2", "SQuAD-v2.0"/"squad_v2" -> "squad2"."""
    try:
        return glue.get_task(name).name
    except ValueError:
        key = str(name).strip().lower()
        m = re.fullmatch(r"squad[-_ ]?v?(\d)?(\.\d)?", key)
        return f"squad{m[1] or ''}" if m else key


def same_task(a: str, b: str) -> bool:
    """Whether two names mean one task ("squad" with no version matches either)."""
    ka, kb = sorted((_task_key(a), _task_key(b)), key=len)
    return ka == kb or (ka == "squad" and kb.startswith("squad"))


_GENERIC_LABEL = re.compile(r"LABEL_\d+$")


def align_labels(head: dict, have: list[str] | None, want, task_name: str, source: str) -> dict:
    """The classification head with its outputs in the task's label order.

    `have` are the checkpoint's label names by class id (e.g. roberta-large-mnli's
    CONTRADICTION, NEUTRAL, ENTAILMENT), `want` the task's. Names matching the task's (any
    case) in another order permute the output units; generic names (LABEL_0, ...) or none
    leave them as they are; other names are used as they stand, with a warning."""
    if not have or len(have) != len(want) or all(_GENERIC_LABEL.match(x) for x in have):
        return head
    lower, target = [x.lower() for x in have], [w.lower() for w in want]
    if sorted(lower) != sorted(target) or len(set(lower)) != len(lower):
        logging.warning("%s: the head's labels %s are not %s's %s; using its classes in their "
                        "order (class i = %r, ...). Set config.head='fresh' for a new head",
                        source, have, task_name, list(want), want[0])
        return head
    perm = [lower.index(t) for t in target]
    if perm == list(range(len(perm))):
        return head
    logging.warning("%s: the head's classes are %s; reordered to %s's order %s", source, have,
                    task_name, list(want))
    out = dict(head)
    out["out"] = {**head["out"], "kernel": np.asarray(head["out"]["kernel"])[..., perm],
                  "bias": np.asarray(head["out"]["bias"])[perm]}
    return out
