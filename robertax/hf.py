"""Hugging Face RoBERTa directories: config.json and its weights (safetensors, or
pytorch_model.bin read with `torch.load(weights_only=True)`; one file, or shards listed by an
index), read into robertax params and written back, by `convert.TABLE`.

Heads: masked LM, sentence classification (or, for RACE, RobertaForMultipleChoice: its pooler
+ Linear(D, 1) is our classifier's dense + out) and the SQuAD span head (qa_outputs). Label
names travel: id2label <-> "labels" in robertax_config.json, as fine-tuning writes it, and
finetuning_task as written. `robertax.convert` keeps `from_hf`, `to_hf` and `read_hf` under
its own name too.
"""

from __future__ import annotations

import json
import os

import numpy as np

from robertax import convert
from robertax.model import RobertaConfig

# Names transformers writes that carry no information of their own (tied copies, buffers);
# `read_hf` checks that the tied copies equal what they copy.
HF_DERIVED = ("lm_head.decoder.weight", "lm_head.decoder.bias",
              "roberta.embeddings.position_ids", "embeddings.position_ids")
# Weight files of a Hugging Face directory, in the order transformers prefers them.
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")


def _read_weights_file(file: str) -> dict[str, np.ndarray]:
    if file.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return load_file(file)
    import torch
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in state.items()}


def hf_weights_file(path: str) -> str | None:
    """The weights file (or shard index) of a Hugging Face directory, if it has one."""
    for name in HF_WEIGHTS:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    return None


def _read_hf_tensors(path: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a Hugging Face directory (one file, or the shards its index lists) and
    the file they were read through (for messages)."""
    file = hf_weights_file(path)
    if file is None:
        raise FileNotFoundError(f"{path}: no weights found (expected one of {list(HF_WEIGHTS)})")
    if not file.endswith(".index.json"):
        return _read_weights_file(file), file
    with open(file) as f:
        try:
            weight_map = json.load(f).get("weight_map")
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{file}: no 'weight_map' (tensor name -> shard file)")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(path, shard)
        if not os.path.isfile(shard_path):
            names = [k for k, v in weight_map.items() if v == shard]
            raise FileNotFoundError(f"{file} lists shard {shard}, which is missing ({shard_path}; "
                                    f"it holds {len(names)} tensor(s), e.g. {names[0]!r})")
        tensors.update(_read_weights_file(shard_path))
    missing = sorted(k for k in weight_map if k not in tensors)
    if missing:
        raise KeyError(f"{file}: tensor(s) {missing[:5]} not found in the shards it names "
                       f"({weight_map[missing[0]]} for {missing[0]!r})")
    return tensors, file


# transformers' hidden_act names -> gelu_approximate ("gelu_new" is the same tanh formula).
HF_GELU = {"gelu": False, "gelu_pytorch_tanh": True, "gelu_new": True}


def hf_config_to_ours(hf: dict, source: str, **overrides) -> RobertaConfig:
    if hf.get("model_type") not in ("roberta", "xlm-roberta", "camembert"):
        raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}, not a RoBERTa "
                         "checkpoint (robertax converts model_type 'roberta')")
    act = hf.get("hidden_act", "gelu")
    if act not in HF_GELU:
        raise ValueError(f"{source}: hidden_act {act!r}; RoBERTa uses exact 'gelu' (robertax "
                         f"computes {sorted(HF_GELU)})")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: position_embedding_type {hf['position_embedding_type']!r} "
                         "is not supported (RoBERTa uses 'absolute')")
    for key in ("is_decoder", "add_cross_attention"):
        if hf.get(key):
            raise ValueError(f"{source}: {key} is true (a causal decoder / cross-attention "
                             "model, e.g. RobertaForCausalLM); robertax computes RoBERTa's "
                             "bidirectional encoder")
    return RobertaConfig(**{**dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 1), pad_token_id=hf.get("pad_token_id", 1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
        dropout_rate=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
        initializer_range=hf.get("initializer_range", 0.02),
        gelu_approximate=HF_GELU[act]), **overrides})


def _hf_name(prefix: str, multiple_choice: bool = False):
    def name_of(row: convert.Row) -> str:
        name = (multiple_choice and row.hf_choice) or row.hf
        if not name:
            return ""
        return name.replace("roberta.", prefix, 1) if name.startswith("roberta.") else name
    return name_of


def _check_tied(tensors: dict, prefix: str, hf: dict, file: str, cfg_path: str) -> None:
    """transformers ties lm_head.decoder to the token embeddings (and its bias to lm_head.bias)
    unless tie_word_embeddings is false; robertax's MLM head always projects with the table."""
    embed = f"{prefix}embeddings.word_embeddings.weight"
    pairs = (("lm_head.decoder.weight", embed), ("lm_head.decoder.bias", "lm_head.bias"))
    for copy, original in pairs:
        if copy in tensors and original in tensors and not np.array_equal(tensors[copy],
                                                                          tensors[original]):
            raise ValueError(
                f"{file}: {copy} differs from {original} (an untied MLM head; config "
                f"tie_word_embeddings={hf.get('tie_word_embeddings', True)}); robertax's MLM "
                "head projects with the token embeddings, so these logits cannot be reproduced")
    if hf.get("tie_word_embeddings") is False and "lm_head.dense.weight" in tensors \
            and "lm_head.decoder.weight" not in tensors:
        raise ValueError(f"{cfg_path}: tie_word_embeddings is false but {file} has no "
                         "lm_head.decoder.weight: the MLM head's projection is missing")


def _labels_from_hf(hf: dict, n: int, where: str) -> list[str] | None:
    """config.json's id2label as a list in id order, or None where it is absent or
    transformers' default LABEL_i. Its ids must be the classifier's outputs, 0..n-1."""
    id2label = hf.get("id2label")
    if not id2label:
        return None
    if not isinstance(id2label, dict):
        raise ValueError(f"{where}: id2label must map class ids to names, got {id2label!r}")
    try:
        ids = sorted(int(k) for k in id2label)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: id2label's ids must be integers, got "
                         f"{sorted(map(str, id2label))}") from None
    if ids != list(range(n)):
        raise ValueError(f"{where}: id2label's ids must be 0..{n - 1}, one per output of the "
                         f"classifier, got {ids}")
    labels = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(n)]
    return None if labels == [f"LABEL_{i}" for i in range(n)] else labels


def read_hf(path: str, **config_overrides) -> tuple[RobertaConfig, dict, dict]:
    """`from_hf`, plus the metadata robertax keeps beside a model (robertax_config.json):
    `labels` (config.json's id2label in id order, unless the default LABEL_i),
    `finetuning_task` (config.json's, as written there) and `multiple_choice` (a
    RobertaForMultipleChoice checkpoint)."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: not a Hugging Face model directory")
    with open(cfg_path) as f:
        hf = json.load(f)
    config = hf_config_to_ours(hf, cfg_path, **config_overrides)
    tensors, file = _read_hf_tensors(path)
    # RobertaModel (no head) saves without the "roberta." prefix.
    prefix = "roberta." if any(k.startswith("roberta.") for k in tensors) else ""
    _check_tied(tensors, prefix, hf, file, cfg_path)
    meta: dict = {}
    if hf.get("finetuning_task"):
        meta["finetuning_task"] = str(hf["finetuning_task"])
    # RobertaForMultipleChoice: pooler + Linear(D, 1). (RobertaForTokenClassification's
    # per-token classifier.weight has no pooler; it is logged as unused.)
    choice = "classifier.weight" in tensors and f"{prefix}pooler.dense.weight" in tensors
    num_labels = None
    for name in ("classifier.out_proj.weight", "classifier.weight")[:1 + choice]:
        if name in tensors:
            num_labels = int(tensors[name].shape[0])
    if choice:
        meta["multiple_choice"] = True
    elif num_labels is not None:
        labels = _labels_from_hf(hf, num_labels, cfg_path)
        if labels:
            meta["labels"] = labels
    params = convert.tensors_to_params(tensors, config, _hf_name(prefix, choice), file,
                                       num_labels, HF_DERIVED)
    return config, params, meta


def from_hf(path: str, **config_overrides) -> tuple[RobertaConfig, dict]:
    """Reads a Hugging Face RoBERTa directory (config.json + model.safetensors or
    pytorch_model.bin, or their sharded form with an index) -> (RobertaConfig, params). Heads
    found in the file are included (`mlm_head`, `classifier`, `span`); unused tensors are
    logged by name. Label names and the kind of head: `read_hf`."""
    config, params, _ = read_hf(path, **config_overrides)
    return config, params


def multiple_choice(meta: dict) -> bool:
    """Whether a classifier is a multiple-choice scorer (RACE: one score per choice)."""
    return bool(meta.get("multiple_choice") or "num_choices" in meta
                or str(meta.get("task", "")).upper() == "RACE")


def hf_config(config: RobertaConfig, params: dict, id2label: dict | None = None, *,
              meta: dict | None = None) -> dict:
    """config.json for `params`. `meta` (robertax_config.json's extras) names the labels
    ("labels") and tells a multiple-choice classifier (RACE) from a regression one."""
    meta = meta or {}
    choice = "classifier" in params and multiple_choice(meta)
    archs = []
    if "mlm_head" in params:
        archs.append("RobertaForMaskedLM")
    if "classifier" in params:
        archs.append("RobertaForMultipleChoice" if choice else
                     "RobertaForSequenceClassification")
    if "span" in params:
        archs.append("RobertaForQuestionAnswering")
    out = {
        "architectures": archs or ["RobertaModel"], "model_type": "roberta",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu_pytorch_tanh" if config.gelu_approximate else "gelu",
        "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": config.attention_dropout_rate,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size, "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps, "pad_token_id": config.pad_token_id,
        "bos_token_id": 0, "eos_token_id": 2, "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }
    if meta.get("task") or meta.get("finetuning_task"):
        out["finetuning_task"] = meta.get("task") or meta["finetuning_task"]
    n = None
    if "classifier" in params and not choice:
        n = int(np.shape(params["classifier"]["out"]["kernel"])[-1])
        if id2label is None and meta.get("labels") and len(meta["labels"]) == n:
            id2label = dict(enumerate(meta["labels"]))
        if n == 1:
            out["problem_type"] = "regression"
    elif "span" in params:
        n = 2  # RobertaForQuestionAnswering sizes qa_outputs by num_labels
    if n is not None:
        id2label = id2label or {i: f"LABEL_{i}" for i in range(n)}
        out["id2label"] = {str(k): v for k, v in id2label.items()}
        out["label2id"] = {v: int(k) for k, v in id2label.items()}
    return out


def to_hf(config: RobertaConfig, params: dict, path: str, id2label: dict | None = None, *,
          meta: dict | None = None) -> None:
    """Writes a directory that `transformers.RobertaForMaskedLM.from_pretrained(path)` (or the
    class for its head: `RobertaForSequenceClassification`, `RobertaForMultipleChoice`,
    `RobertaForQuestionAnswering`) loads: config.json + model.safetensors. `meta`: see
    `hf_config`."""
    from safetensors.numpy import save_file
    params = convert._to_numpy(params)
    os.makedirs(path, exist_ok=True)
    prefix = "roberta." if any(h in params for h in convert.HEADS) else ""
    choice = "classifier" in params and multiple_choice(meta or {})
    tensors = convert.params_to_tensors(params, config, _hf_name(prefix, choice),
                                        dest=f"{path} (Hugging Face)")
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config(config, params, id2label, meta=meta), f, indent=2)
