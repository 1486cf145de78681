"""fairseq RoBERTa checkpoints (`model.pt` + `dict.txt`) to and from robertax, without fairseq.

    python -m robertax.convert --src=roberta.large/ --dst=ours/      # the paper's released files
    python -m robertax.convert --src=ours/ --dst=fs/ --dst_format=fairseq [--fairseq_head=mnli]

Reading accepts both key layouts fairseq has written:
  released (2019)  decoder.sentence_encoder.*, fused self_attn.in_proj_{weight,bias} (rows q;k;v),
                   emb_layer_norm, decoder.lm_head.*, config in an argparse Namespace `args`
  newer            encoder.sentence_encoder.*, split self_attn.{q,k,v}_proj, layernorm_embedding,
                   encoder.lm_head.*, config in `cfg["model"]` (a dict or a Namespace)
Both are first renamed to the released names with split q/k/v, which `convert.TABLE` lists, and
then go through the table like every other format. Writing produces the released layout (fused
q/k/v, `args`), which every fairseq version reads (newer ones upgrade it on load).

Architecture fields missing from args/cfg take fairseq's defaults for the named `arch`, as
fairseq itself does (newer `cfg["model"]` often holds only what was set on the command line).
The vocabulary size is the embedding's row count; fairseq's `max_positions` (512) is the tokens
a sequence may hold, and its learned position table has max_positions + pad + 1 rows (514).

`model.pt` is a pickle. It is loaded with `torch.load(weights_only=True)`, which builds only
tensors and plain containers, plus the few types a real checkpoint holds (argparse.Namespace,
numpy scalars in its training state). Anything else is refused by name before it can run;
`trusted=True` (`--trust_pickle`) unpickles fully, for files whose origin you trust.

`dict.txt` is fairseq's Dictionary file: "<token> <count>" per line; the four specials
`<s> <pad> </s> <unk>` are implicit at ids 0-3, so line n (from 0) is id 4 + n, and RoBERTa
appends `<mask>` after the last line. A vocabulary of V therefore has V - 5 lines.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import filecmp
import hashlib
import io
import logging
import os
import pickle
import pickletools
import re
import shutil
import zipfile

import numpy as np

from robertax import convert
from robertax.model import RobertaConfig

CHECKPOINT_FILE = "model.pt"
DICT_FILE = "dict.txt"
NUM_SPECIALS = 4  # <s> <pad> </s> <unk>, implicit in dict.txt
DEFAULT_HEAD = "sentence_classification_head"  # fairseq's --classification-head-name default
PAD = 1  # fairseq's Dictionary puts <pad> at 1; the position offset depends on it

# fairseq's RoBERTa architectures (fairseq/models/roberta/model.py): what a missing field means.
_BASE = dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
             encoder_attention_heads=12, dropout=0.1, attention_dropout=0.1,
             activation_fn="gelu", encoder_learned_pos=True, no_token_positional_embeddings=False,
             no_scale_embedding=True, layernorm_embedding=True, untie_weights_roberta=False)
_ARCHS = {
    "roberta": {}, "roberta_base": {},
    "roberta_large": dict(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096,
                          encoder_attention_heads=16),
    "xlm": dict(encoder_layers=16, encoder_embed_dim=1280, encoder_ffn_embed_dim=5120,
                encoder_attention_heads=16),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that needs more than weights-only unpickling; nothing in it was run."""


# --- loading a pickle safely ------------------------------------------------------------------

def _safe_globals() -> list:
    """What a real fairseq RoBERTa checkpoint pickles beyond torch's weights-only defaults:
    the `args` Namespace, and numpy scalars/dtypes in `extra_state`/`optimizer_history`
    (e.g. a best loss). Rebuilding these runs no code of the file's choosing."""
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 / < 2
    scalar = core.multiarray.scalar
    allowed = [argparse.Namespace, np.dtype, scalar,
               (scalar, "numpy.core.multiarray.scalar")]  # as numpy < 2 names it in old files
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return allowed


def _pickled_globals(path: str) -> list[str]:
    """Every global a torch file's pickles name, found by reading opcodes (nothing executes)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            blobs = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    else:  # legacy torch format or a bare pickle: pickles back to back, then raw storage bytes
        with open(path, "rb") as f:
            blobs = [f.read()]
    found: list[str] = []
    for blob in blobs:
        stream = io.BytesIO(blob)
        for _ in range(5):  # the legacy format holds 5 pickles, then raw storage bytes
            recent: list = []  # values pushed lately (strings, for STACK_GLOBAL)
            memo: dict = {}
            try:
                for op, arg, _ in pickletools.genops(stream):
                    name = op.name
                    if name == "GLOBAL":
                        found.append(arg.replace(" ", "."))
                    elif name == "STACK_GLOBAL" and len(recent) >= 2:
                        found.append(f"{recent[-2]}.{recent[-1]}")
                    elif name == "MEMOIZE":
                        memo[len(memo)] = recent[-1] if recent else None
                    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                        memo[arg] = recent[-1] if recent else None
                    elif name in ("GET", "BINGET", "LONG_BINGET"):
                        recent.append(memo.get(arg))
                    elif "UNICODE" in name or "STRING" in name:
                        recent.append(arg)
                    elif name not in ("FRAME", "PROTO"):
                        recent.append(None)
            except Exception:  # noqa: BLE001 - not a pickle (any more): stop
                break
            if stream.tell() >= len(blob):
                break
    return list(dict.fromkeys(found))


def _refused_globals(path: str, error: Exception) -> list[str]:
    named = re.findall(r"GLOBAL ([\w.]+)", str(error))  # what torch itself refused
    if named:
        return list(dict.fromkeys(named))
    allowed = {"collections.OrderedDict", "argparse.Namespace", "numpy.dtype",
               "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"}
    return [g for g in _pickled_globals(path)
            if g not in allowed and not g.startswith(("torch.", "numpy.dtypes."))]


def load_checkpoint(path: str, trusted: bool = False) -> dict:
    """A fairseq checkpoint's top-level dict, loaded weights-only unless `trusted`."""
    import torch
    if trusted:
        logging.warning("%s: unpickling without restrictions (trusted=True / --trust_pickle): "
                        "this runs whatever code the file names; do it only for files you trust",
                        path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            with torch.serialization.safe_globals(_safe_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError) as e:  # torch's messages omit the file
            raise ValueError(f"{path}: not a readable torch checkpoint ({e})") from e
        except pickle.UnpicklingError as e:
            names = _refused_globals(path, e)
            if not names:
                lines = [x for x in str(e).splitlines() if x.strip() and "documentation" not in x]
                raise UnsafeCheckpointError(f"{path}: weights-only loading cannot read it "
                                            f"({lines[-1].strip() if lines else e}); nothing in "
                                            "it was run") from None
            raise UnsafeCheckpointError(
                f"{path}: refused to load: the pickle needs {', '.join(names)}, which a RoBERTa "
                "checkpoint does not (it holds tensors, containers, an argparse.Namespace and "
                "numpy scalars). Nothing in the file was run. If you trust where it came from, "
                "pass trusted=True (--trust_pickle).") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' "
                         f"state dict, found {type(ckpt).__name__}"
                         f"{' with keys ' + str(sorted(ckpt)) if isinstance(ckpt, dict) else ''})")
    return ckpt


# --- dict.txt ---------------------------------------------------------------------------------

def read_dictionary(path: str) -> list[str]:
    """dict.txt's lines, checked as fairseq's Dictionary parses them ("<token> <count>
    [#fairseq:overwrite]"); line n is token id 4 + n."""
    lines, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip()
            parts = line.rsplit(" ", 1)
            overwrite = len(parts) == 2 and parts[1] == "#fairseq:overwrite"
            if overwrite:
                parts = parts[0].rsplit(" ", 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{n}: {line!r} is not '<token> <count> [flags]'")
            if parts[0] in seen and not overwrite:
                raise ValueError(f"{path}:{n}: token {parts[0]!r} appears twice (fairseq needs "
                                 "#fairseq:overwrite for that)")
            seen.add(parts[0])
            lines.append(line)
    return lines


def dictionary_vocab_size(path: str) -> int:
    """The model vocabulary a RoBERTa dict.txt implies: 4 specials + its lines + <mask>."""
    return NUM_SPECIALS + len(read_dictionary(path)) + 1


def find_dictionary(path: str) -> str | None:
    """The dict.txt inside a directory or beside a file, if there is one."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(folder, DICT_FILE)
    return candidate if os.path.isfile(candidate) else None


def write_placeholder_dictionary(path: str, vocab_size: int) -> None:
    """vocab_size - 5 entries named as fairseq names its own filler tokens (madeupwordNNNN)."""
    n = vocab_size - NUM_SPECIALS - 1
    if n < 0:
        raise ValueError(f"vocab_size {vocab_size} is below fairseq's 4 specials + <mask>")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"madeupword{i:04d} 0\n" for i in range(n))


def _check_dictionary(path: str, vocab_size: int) -> None:
    want = dictionary_vocab_size(path)
    if want != vocab_size:
        raise ValueError(f"{path} has {want - NUM_SPECIALS - 1} entries, so a vocabulary of "
                         f"{want} (4 specials + entries + <mask>), but the model's is {vocab_size}")


# --- reading ----------------------------------------------------------------------------------

def checkpoint_file(path: str) -> str:
    if os.path.isdir(path):
        file = os.path.join(path, CHECKPOINT_FILE)
        if not os.path.isfile(file):
            found = sorted(f for f in os.listdir(path) if f.endswith(".pt"))
            raise FileNotFoundError(f"{path}: no {CHECKPOINT_FILE}"
                                    + (f" (found {found}: pass the file itself)" if found else ""))
        return file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such fairseq checkpoint")
    return path


def _to_numpy(state: dict, source: str) -> dict[str, np.ndarray]:
    import torch
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{source}: model[{k!r}] is a {type(v).__name__}, not a tensor")
        v = v.detach().cpu()
        out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    return out


def released_names(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Renames a state dict of either layout to the released names with split q/k/v."""
    out: dict[str, np.ndarray] = {}
    for key, t in state.items():
        name = "decoder." + key[len("encoder."):] if key.startswith("encoder.") else key
        name = name.replace(".layernorm_embedding.", ".emb_layer_norm.")
        fused = re.fullmatch(r"(.*\.self_attn)\.in_proj_(weight|bias)", name)
        parts = {name: t}
        if fused:
            if t.shape[0] % 3:
                raise ValueError(f"{source}: {key} has {t.shape[0]} rows; fused attention "
                                 "stacks q, k and v, so it needs a multiple of 3")
            parts = {f"{fused[1]}.{p}_proj.{fused[2]}": x for p, x in zip("qkv", np.split(t, 3))}
        for n, x in parts.items():
            if n in out:
                raise ValueError(f"{source}: {key} and another tensor both map to {n}")
            out[n] = x
    return out


def _model_args(ckpt: dict, source: str) -> tuple[dict, str]:
    cfg = ckpt.get("cfg")
    model = cfg.get("model") if isinstance(cfg, dict) else None
    for value, where in ((model, "cfg['model']"), (ckpt.get("args"), "args")):
        if isinstance(value, argparse.Namespace):
            return vars(value), where
        if isinstance(value, dict):
            return dict(value), where
    raise KeyError(f"{source}: neither 'args' nor cfg['model'] describes the model "
                   f"(top-level keys: {sorted(ckpt)})")


def _layer_count(tensors: dict, source: str) -> int:
    found = {int(m[1]) for k in tensors
             if (m := re.match(r"decoder\.sentence_encoder\.layers\.(\d+)\.", k))}
    if found != set(range(len(found))):
        raise ValueError(f"{source}: layer indices {sorted(found)} are not 0..n-1")
    return len(found)


def config_from_args(args: dict, tensors: dict, source: str) -> RobertaConfig:
    """RobertaConfig from fairseq's model args, refusing variants robertax does not compute."""
    arch = args.get("arch") or args.get("_name") or "roberta"
    a = {**_BASE, **_ARCHS.get(arch, {}), **{k: v for k, v in args.items() if v is not None}}
    a.setdefault("max_positions", a.get("tokens_per_sample", 512))  # as fairseq's build_model
    problems = {
        "activation_fn": a["activation_fn"] != "gelu",
        "encoder_learned_pos": not a["encoder_learned_pos"] or a["no_token_positional_embeddings"],
        "no_scale_embedding": not a["no_scale_embedding"],
    }
    for field, bad in problems.items():
        if bad:
            raise ValueError(f"{source}: {field}={a.get(field)!r} is not RoBERTa's architecture "
                             "(exact GELU, learned positions, unscaled embeddings)")
    # The released code hard-wired post-LN layers, so its args' encoder_normalize_before means
    # nothing; a pre-LN model shows itself by its final LayerNorm instead.
    if any(k.startswith("decoder.sentence_encoder.layer_norm.") for k in tensors):
        raise ValueError(f"{source}: has a final sentence_encoder.layer_norm, i.e. a pre-LayerNorm "
                         "encoder (roberta_prenorm); robertax computes RoBERTa's post-LN encoder")
    if a.get("encoder_layers_to_keep"):  # fairseq would prune layers at load time
        raise ValueError(f"{source}: encoder_layers_to_keep={a['encoder_layers_to_keep']!r} "
                         "(LayerDrop pruning) is not supported; convert the full model")
    embed = tensors.get("decoder.sentence_encoder.embed_tokens.weight")
    if embed is None:
        raise KeyError(f"{source}: missing tensor 'decoder.sentence_encoder.embed_tokens.weight' "
                       "(or encoder.sentence_encoder.embed_tokens.weight)")
    layers = _layer_count(tensors, source)
    D = int(a["encoder_embed_dim"])
    if layers != int(a["encoder_layers"]) or embed.shape[1] != D:
        raise ValueError(f"{source}: args say {a['encoder_layers']} layers of width {D} "
                         f"(arch {arch!r}), the tensors hold {layers} of width {embed.shape[1]}")
    return RobertaConfig(
        vocab_size=int(embed.shape[0]), hidden_size=D, num_layers=layers,
        num_heads=int(a["encoder_attention_heads"]),
        intermediate_size=int(a["encoder_ffn_embed_dim"]),
        max_position_embeddings=int(a["max_positions"]) + PAD + 1, type_vocab_size=1,
        pad_token_id=PAD, layer_norm_eps=1e-5, dropout_rate=float(a["dropout"]),
        attention_dropout_rate=float(a["attention_dropout"]))


def _head_names(tensors: dict) -> list[str]:
    return sorted({k.split(".")[1] for k in tensors if k.startswith("classification_heads.")})


def _name_of(head: str):
    return lambda row: row.fairseq.replace("{h}", head)


def from_fairseq(path: str, *, trusted: bool = False, head: str | None = None,
                 **config_overrides) -> tuple[RobertaConfig, dict]:
    """Reads a fairseq RoBERTa checkpoint (a `model.pt`, or a directory holding one) ->
    (RobertaConfig, params) with `mlm_head` and, when the file has one, `classifier` (the
    classification head named `head`; required when there are several)."""
    config, params, _ = read_fairseq(path, trusted=trusted, head=head, **config_overrides)
    return config, params


def read_fairseq(path: str, *, trusted: bool = False, head: str | None = None,
                 **config_overrides) -> tuple[RobertaConfig, dict, dict]:
    """`from_fairseq`, plus metadata: `fairseq_head`, the name of the classification head read
    (so that writing fairseq again keeps it)."""
    file = checkpoint_file(path)
    ckpt = load_checkpoint(file, trusted)
    tensors = released_names(_to_numpy(ckpt["model"], file), file)
    args, where = _model_args(ckpt, file)
    config = config_from_args(args, tensors, f"{file} ({where})")
    if config_overrides:
        config = dataclasses.replace(config, **config_overrides)

    tied, embed = "decoder.lm_head.weight", tensors["decoder.sentence_encoder.embed_tokens.weight"]
    if tied in tensors and not np.array_equal(tensors[tied], embed):
        raise ValueError(f"{file}: {tied} differs from the token embeddings (untied weights); "
                         "robertax's MLM head projects with the token embeddings")
    heads = _head_names(tensors)
    if head is not None and head not in heads:
        raise KeyError(f"{file}: no classification head {head!r} (has {heads or 'none'})")
    if head is None and len(heads) > 1:
        raise ValueError(f"{file}: {len(heads)} classification heads {heads}; choose one with "
                         "head=... (--fairseq_head)")
    head = head or (heads[0] if heads else DEFAULT_HEAD)
    other = [k for k in tensors if k.startswith("classification_heads.")
             and not k.startswith(f"classification_heads.{head}.")]
    for k in other:
        del tensors[k]
    if other:
        logging.info("%s: dropped the other classification heads' tensors %s", file, other)
    num_labels, meta = None, {}
    if f"classification_heads.{head}.out_proj.weight" in tensors:
        num_labels = tensors[f"classification_heads.{head}.out_proj.weight"].shape[0]
        meta["fairseq_head"] = head
        logging.info("%s: classification head %r (%d labels) -> classifier", file, head,
                     num_labels)
    derived = tuple(k for k in tensors if k == tied or k.endswith((".version", "._float_tensor")))
    params = convert.tensors_to_params(tensors, config, _name_of(head), file, num_labels, derived)

    dictionary = find_dictionary(file)
    if dictionary is None:
        logging.info("%s: no %s beside it", file, DICT_FILE)
    elif dictionary_vocab_size(dictionary) != config.vocab_size:
        logging.warning("%s implies a vocabulary of %d, the checkpoint's is %d: is it this "
                        "model's dictionary?", dictionary, dictionary_vocab_size(dictionary),
                        config.vocab_size)
    return config, params, meta


# --- writing ----------------------------------------------------------------------------------

def fairseq_args(config: RobertaConfig, num_labels: int | None = None) -> argparse.Namespace:
    """The `args` of a written checkpoint: the architecture fields fairseq builds RoBERTa from,
    plus the few that fairseq's checkpoint upgrade reads."""
    max_positions = config.max_position_embeddings - PAD - 1
    return argparse.Namespace(
        arch="roberta", task="masked_lm", criterion="masked_lm",
        encoder_layers=config.num_layers, encoder_embed_dim=config.hidden_size,
        encoder_ffn_embed_dim=config.intermediate_size,
        encoder_attention_heads=config.num_heads, max_positions=max_positions,
        max_source_positions=max_positions, tokens_per_sample=max_positions,
        dropout=config.dropout_rate, attention_dropout=config.attention_dropout_rate,
        activation_dropout=0.0, pooler_dropout=config.dropout_rate, activation_fn="gelu",
        pooler_activation_fn="tanh", encoder_normalize_before=False, encoder_learned_pos=True,
        layernorm_embedding=True, no_scale_embedding=True, no_token_positional_embeddings=False,
        untie_weights_roberta=False, encoder_layerdrop=0.0, encoder_layers_to_keep=None,
        lr=[0.0], **({"num_classes": num_labels} if num_labels else {}))


def to_fairseq(config: RobertaConfig, params: dict, path: str, *, head: str | None = None,
               dictionary: str | None = None, dtype=np.float32) -> str:
    """Writes a released-layout fairseq checkpoint: `path` is a directory (gets model.pt and
    dict.txt) or a `.pt` file (dict.txt beside it). The classifier, if any, becomes
    `classification_heads.<head>`. `dictionary` is copied as dict.txt; without one a dict.txt
    already in the folder is kept when its size fits the model (else this raises, writing
    nothing), and otherwise a placeholder with the right number of entries is written.
    Returns the model.pt path."""
    import torch
    if config.pad_token_id != PAD:
        raise ValueError(f"pad_token_id {config.pad_token_id}: fairseq's dictionary puts <pad> "
                         "at 1")
    if config.type_vocab_size != 1:
        raise ValueError(f"type_vocab_size {config.type_vocab_size}: fairseq's RoBERTa has no "
                         "token types")
    if config.layer_norm_eps != 1e-5:
        raise ValueError(f"layer_norm_eps {config.layer_norm_eps}: fairseq's LayerNorm uses 1e-5")
    if config.gelu_approximate:  # fairseq's head would follow activation_fn, ours keeps erf
        raise ValueError("gelu_approximate=True: fairseq's RoBERTa is written with exact GELU; "
                         "train or convert with gelu_approximate=False")
    if path.endswith(".pt"):
        file, folder = path, os.path.dirname(os.path.abspath(path))
    else:
        folder = path
        file = os.path.join(folder, CHECKPOINT_FILE)
    dict_path = os.path.join(folder, DICT_FILE)
    # A dict.txt already in the folder is never overwritten: it may be the only copy.
    if dictionary is not None:
        _check_dictionary(dictionary, config.vocab_size)
        if os.path.exists(dict_path) and os.path.abspath(dictionary) != os.path.abspath(
                dict_path) and not filecmp.cmp(dictionary, dict_path, shallow=False):
            raise ValueError(f"{dict_path} already exists and differs from the model's "
                             f"dictionary {dictionary}; not overwriting it (move it away)")
    elif os.path.exists(dict_path):
        try:
            _check_dictionary(dict_path, config.vocab_size)
        except ValueError as e:
            raise ValueError(f"{e}; it is not this model's dictionary, and it is not "
                             "overwritten: move it away, or write elsewhere") from None
    params = convert._to_numpy(params)  # pylint: disable=protected-access
    head = head or DEFAULT_HEAD
    flat = convert.params_to_tensors(params, config, _name_of(head), dtype,
                                     dest=f"{file} (fairseq)")

    # fairseq adds no token-type row, so a nonzero one (a model trained by robertax) is folded
    # into the position table: every token, padding included, gets exactly one row of each.
    types = np.asarray(params["encoder"]["embed"]["types"]["embedding"])
    positions = "decoder.sentence_encoder.embed_positions.weight"
    if np.any(types != 0):
        flat[positions] = (flat[positions] + types[0].astype(dtype)).astype(dtype)
        logging.info("folded the token-type embedding into %s (fairseq has no token types)",
                     positions)

    state: dict = collections.OrderedDict()
    for name, t in flat.items():
        fused = re.fullmatch(r"(.*\.self_attn)\.([qkv])_proj\.(weight|bias)", name)
        if not fused:
            state[name] = torch.from_numpy(t)
        elif fused[2] == "q":  # rows stacked q; k; v, as the released in_proj_* are
            parts = [flat[f"{fused[1]}.{p}_proj.{fused[3]}"] for p in "qkv"]
            state[f"{fused[1]}.in_proj_{fused[3]}"] = torch.from_numpy(np.concatenate(parts))
    if "mlm_head" in params:  # the tied projection: the same tensor, so torch.save stores it once
        state["decoder.lm_head.weight"] = state["decoder.sentence_encoder.embed_tokens.weight"]
    else:
        logging.warning("no MLM head in these params: fairseq's RobertaModel expects "
                        "decoder.lm_head.* and will not load the file strictly")
    num_labels = int(np.shape(params["classifier"]["out"]["kernel"])[-1]) \
        if "classifier" in params else None

    os.makedirs(folder, exist_ok=True)
    ckpt = {
        "args": fairseq_args(config, num_labels),
        "model": state,
        # fairseq's checkpoint upgrade reads the last entry of these and the iterator position.
        "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    torch.save(ckpt, file)
    if dictionary is not None:
        if os.path.abspath(dictionary) != os.path.abspath(dict_path):
            shutil.copyfile(dictionary, dict_path)
    elif os.path.exists(dict_path):
        logging.info("%s: kept the dictionary already there (%d entries: vocabulary %d, as the "
                     "model's)", dict_path, config.vocab_size - NUM_SPECIALS - 1,
                     config.vocab_size)
    else:
        write_placeholder_dictionary(dict_path, config.vocab_size)
        logging.warning("%s: the source has no dict.txt, so this is a placeholder of %d "
                        "madeupword entries (vocabulary %d); replace it with the model's real "
                        "dictionary to tokenize with fairseq", dict_path,
                        config.vocab_size - NUM_SPECIALS - 1, config.vocab_size)
    return file


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
