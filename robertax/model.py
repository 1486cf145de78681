"""The RoBERTa encoder and its heads, in Flax Linen.

Numerically RoBERTa (fairseq's `roberta.base/large`, transformers' `RobertaModel`): a post-LayerNorm
BERT encoder with learned positions offset by the pad id, one token-type row, exact (erf) GELU,
LayerNorm eps 1e-5, and an MLM head tied to the token embeddings with its own bias.

Dimension letters used in shapes and einsums:
  B batch   L length (query)   S length (key)   D model   N heads   K head dim
  F feed-forward   V vocabulary (padded)   P masked positions   C choices   Y layers

Parameters are float32 (`param_dtype`); activations run in `dtype` (float32 / bfloat16 /
float16). Every parameter carries logical axis names; `robertax.sharding` maps them to the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from robertax import cpu_attention, cpu_products, flash_attention
from robertax.layers import (DropoutKey, ResidualNorm, cpu_dense, cpu_mkl, dense, dense_params,
                             embed_init, gelu, hash_key_words, layer_norm, normal_init, zeros_init)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RobertaConfig:
    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514  # 512 tokens + the pad offset (positions start at 2)
    type_vocab_size: int = 1
    pad_token_id: int = 1
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    pad_vocab_to: int = 1  # embedding rows padded to a multiple of this (128 is fast on GPUs)
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    # "auto" | "xla" | "cudnn" | "pallas" (robertax's fused kernel with attention dropout,
    # `flash_attention`; on a GPU Triton, elsewhere Pallas's interpreter, slow: for tests)
    attention: str = "auto"
    remat: str = "none"  # "none" | "full" | "dots"
    # Layers per iteration of the layer scan; 0: all of them (the loop unrolled). Unrolled is
    # the default: on an H100 (base, bf16, batch 128) 1,083 vs 762 sequences/s and 32 vs 44 GB,
    # as the scan's stacking of per-layer activations (zero fills, copies) disappears.
    scan_unroll: int = 0
    fused_qkv: bool = False  # Q, K and V from one matrix product (same parameters, same math)
    gelu_approximate: bool = False  # tanh GELU in the layers (a speed knob; RoBERTa uses erf).
    # As transformers' hidden_act="gelu_pytorch_tanh": the MLM head keeps erf.
    # LayerNorm with a hand-written backward that keeps only its input and per-row statistics
    # (`vjp_ops.layer_norm`); autodiff through nn.LayerNorm saves three float32 arrays of the
    # input's size for its backward. Same parameters and math. A speed knob for GPUs, not yet
    # measured there (tools/gpu_check.sh base_lnvjp); on a CPU neither faster nor slower.
    layer_norm_vjp: bool = False
    # Attention's core through `cpu_attention.attention` (float32 softmax, the weights kept once
    # in the compute dtype, a hand-written backward) on every backend where XLA's path would
    # run, e.g. with attention dropout on a GPU. Always so on the CPU in bf16. A speed knob for
    # GPUs, not yet measured there (tools/gpu_check.sh base_xla_vjp).
    attention_vjp: bool = False
    # Attention without the key and value biases' additions, the same math: softmax ignores
    # q·b_k (the same for every key), and weights that sum to one carry b_v through unchanged,
    # so it joins the output projection's bias as b_v·W_o. Exact only without attention
    # dropout, so it applies only then (and a wholly padded row, with no key to attend to,
    # comes out differently; its loss weight is zero). Same parameters (the key bias's gradient
    # is exactly zero). A speed knob for GPUs (2 of the 3 bias additions per layer gone, and
    # their gradients' reductions), not yet measured there (tools/gpu_check.sh base_fold).
    fold_attention_biases: bool = False
    # The MLM head's positions picked by a product with one-hot rows (see gather_positions);
    # False: by take_along_axis, the form before 2026-12-06 (tools/gpu_check.sh base_take).
    gather_onehot: bool = True
    # Each layer's residual add, dropout and LayerNorm in one Pallas kernel, forward and
    # backward (`fused_norm`): where XLA compiles each norm into three kernels and writes the
    # dropout mask. Same parameters and math; dropout needs dropout_rng="hash" (the kernels
    # recompute nn.Dropout's hash masks, the same masks). On a GPU Triton; elsewhere Pallas's
    # interpreter (slow: for tests). A speed knob, estimated but not yet measured on a GPU
    # (tools/gpu_check.sh base_fused_norm).
    fused_norm: bool = False
    # Matrix products on the CPU: "xla" (XLA:CPU's) or "mkl" (Intel MKL through a custom call,
    # float32 or bfloat16; needs `pip install mkl` and a C++ compiler: robertax/mkl_gemm.py).
    # Other backends ignore it.
    cpu_matmul: str = "xla"

    @classmethod
    def base(cls, **kw) -> "RobertaConfig":
        return cls(**kw)

    @classmethod
    def large(cls, **kw) -> "RobertaConfig":
        return cls(**{**dict(hidden_size=1024, num_layers=24, num_heads=16,
                             intermediate_size=4096), **kw})

    @classmethod
    def tiny(cls, **kw) -> "RobertaConfig":
        return cls(**{**dict(vocab_size=8192, hidden_size=128, num_layers=2, num_heads=4,
                             intermediate_size=512, max_position_embeddings=130), **kw})

    @classmethod
    def from_dict(cls, d, **kw) -> "RobertaConfig":
        """From a config's `model` section (ml_collections ConfigDict or dict)."""
        d = dict(d)
        d.update(kw)
        for key in ("dtype", "param_dtype"):
            if isinstance(d.get(key), str):
                d[key] = jnp.dtype(d[key])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise KeyError(f"unknown model config keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    def replace(self, **kw) -> "RobertaConfig":
        return dataclasses.replace(self, **kw)

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_to)
        return -(-self.vocab_size // m) * m

    @property
    def head_dim(self) -> int:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_heads {self.num_heads}")
        return self.hidden_size // self.num_heads

    @property
    def layers_per_scan_step(self) -> int:
        if self.scan_unroll < 0:
            raise ValueError(f"scan_unroll must be >= 0 (0: all layers), got {self.scan_unroll}")
        return min(self.scan_unroll or self.num_layers, self.num_layers)

    @property
    def max_length(self) -> int:
        return self.max_position_embeddings - self.pad_token_id - 1


def position_ids_from_input_ids(input_ids: Array, pad_token_id: int) -> Array:
    """Real tokens count up from pad_id + 1 (= 2); padding gets the pad row (1)."""
    not_pad = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + pad_token_id


def compute_capability() -> Optional[tuple]:
    """The first device's CUDA compute capability, e.g. (9, 0); None where the device does not
    say (a CPU, a TPU, a compile-only GPU); () for a GPU that names something else (ROCm
    gives its architecture, e.g. "gfx90a")."""
    cc = getattr(jax.devices()[0], "compute_capability", None)
    if cc is None:
        return None
    try:
        return tuple(int(x) for x in str(cc).split("."))
    except ValueError:
        return ()


def half_precision() -> str:
    """The 16-bit float this accelerator computes fast: float16 on CUDA GPUs older than
    compute capability 8.0 (a T4, a V100: no bfloat16 units), bfloat16 elsewhere."""
    cc = compute_capability()
    return "float16" if cc and cc < (8, 0) else "bfloat16"  # (): not CUDA (ROCm)


def attention_implementation(config: RobertaConfig, dropout_active: bool) -> str:
    """Which attention path runs: cuDNN flash where it applies, else XLA.

    cuDNN's fused kernel needs a GPU of compute capability 8.0 (Ampere) or newer, half
    precision and no attention-weight dropout (the paper trains with 0.1; set
    attention_dropout_rate=0 to use the fast path in training). On older GPUs (a T4, a V100)
    "auto" takes XLA's path. "pallas" (asked for by name) is robertax's own fused kernel,
    with attention dropout (`flash_attention`).
    """
    want = config.attention
    if want not in ("auto", "xla", "cudnn", "pallas"):
        raise ValueError(f"model.attention must be auto, xla, cudnn or pallas, got {want!r}")
    if want == "pallas":
        return "pallas"
    half = jnp.dtype(config.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    cc = compute_capability()
    if want == "cudnn":
        if dropout_active:
            raise ValueError("model.attention='cudnn' cannot apply attention dropout; set "
                             "model.attention_dropout_rate=0 or model.attention='auto'")
        if not half:
            raise ValueError(f"model.attention='cudnn' needs bfloat16/float16 compute, "
                             f"got {jnp.dtype(config.dtype)}")
        if cc is not None and cc < (8, 0):
            has = ".".join(map(str, cc)) if cc else "no CUDA compute capability"
            raise ValueError(f"model.attention='cudnn' needs a GPU of compute capability 8.0 or "
                             f"newer (cuDNN flash attention); {jax.devices()[0].device_kind} has "
                             f"{has}. Use model.attention='auto' or 'xla'")
        return "cudnn"
    if (want == "auto" and half and not dropout_active and jax.default_backend() == "gpu"
            and (cc is None or cc >= (8, 0))):
        return "cudnn"
    return "xla"


@dataclasses.dataclass
class AttentionMask:
    """How attention is restricted: a dense boolean mask and/or per-row key lengths."""
    mask: Optional[Array] = None  # [B, 1, L, S] bool, True where attending is allowed
    kv_lengths: Optional[Array] = None  # [B] int32: keys 0..len-1 are real (padding at the end)
    keys: Optional[Array] = None  # [B, S] bool: the real keys, where `mask` is only padding
    segments: Optional[Array] = None  # [B, L] int: packed rows' segment ids, where `mask` is that


jax.tree_util.register_dataclass(AttentionMask,
                                 data_fields=["mask", "kv_lengths", "keys", "segments"],
                                 meta_fields=[])


def make_attention_mask(input_ids: Array, pad_token_id: int, attention_mask=None,
                        segment_ids=None, kv_lengths=None) -> AttentionMask:
    if kv_lengths is not None:
        return AttentionMask(kv_lengths=kv_lengths.astype(jnp.int32))
    if segment_ids is not None:  # packed rows: attend only within the same input
        seg = segment_ids
        mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)  # [B, L, S]
        return AttentionMask(mask=mask[:, None], segments=seg)
    if attention_mask is None:
        attention_mask = input_ids != pad_token_id
    B, L = input_ids.shape[0], input_ids.shape[-1]
    # Broadcast to [B, 1, L, S]: cuDNN wants the full query length (XLA fuses it away).
    keys = attention_mask.astype(bool)
    mask = jnp.broadcast_to(keys[:, None, None, :], (B, 1, L, keys.shape[-1]))
    return AttentionMask(mask=mask, keys=keys)


def _dense_mask(amask: AttentionMask, S: int) -> Optional[Array]:
    """The mask as a bool [B, 1, 1|L, S] array (kv_lengths turned into one), or None."""
    if amask.kv_lengths is None:
        return amask.mask
    return (jnp.arange(S)[None, :] < amask.kv_lengths[:, None])[:, None, None, :]


def _flash_masks(amask: AttentionMask, S: int) -> dict:
    """The mask as `flash_attention.attention` takes it: the [B, S] real keys and/or the
    [B, L] segment ids of packed rows."""
    if amask.kv_lengths is not None:
        return dict(kv_valid=jnp.arange(S)[None, :] < amask.kv_lengths[:, None])
    return dict(kv_valid=amask.keys, segment_ids=amask.segments)


def _cpu_float16(config: RobertaConfig) -> bool:
    """float16 on the CPU, which has no float16 x float16 -> float32 products (what XLA's
    attention path and `cpu_attention` ask for): attention takes the explicit path."""
    return jnp.dtype(config.dtype) == jnp.float16 and jax.default_backend() == "cpu"


def _attention_core(config: RobertaConfig) -> bool:
    """Whether XLA's attention path runs through `cpu_attention`: on the CPU in bf16, and
    everywhere with model.attention_vjp except float16 on the CPU."""
    if _cpu_float16(config):
        return False
    return config.attention_vjp or (jax.default_backend() == "cpu"
                                    and jnp.dtype(config.dtype) == jnp.bfloat16)


class _Projection(nn.Module):
    """The parameters of a Dense D -> (N, K), created but not applied (the same as
    `dense(config, (N, K), ...)` creates)."""
    config: RobertaConfig

    @nn.compact
    def __call__(self, D: int):
        c = self.config
        return dense_params(self, c, ("embed", "heads", "kv"), (D,), (c.num_heads, c.head_dim))


def _fused_qkv(config: RobertaConfig, x: Array) -> tuple[Array, Array, Array]:
    """Q, K, V as one [D, 3*N*K] matrix product: one large GEMM instead of three."""
    D = x.shape[-1]
    kernels, biases = zip(*(_Projection(config, name=n)(D) for n in ("query", "key", "value")))
    w = jnp.stack(kernels, axis=1)  # [D, 3, N, K]
    b = jnp.stack(biases, axis=0)  # [3, N, K]
    x = x.astype(config.dtype)
    mkl = cpu_dense(config)
    if mkl is None:
        qkv = jnp.einsum("BLD,DTNK->BLTNK", x, w.astype(config.dtype)) + b.astype(config.dtype)
    else:
        qkv = cpu_products.dense(x.reshape(-1, D), w.reshape(D, -1), b.reshape(-1), mkl)
        qkv = qkv.reshape(*x.shape[:-1], *b.shape)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


class SelfAttention(nn.Module):
    config: RobertaConfig
    deterministic: bool
    split_bias: bool = False  # return (output without its bias, the bias) (model.fused_norm)

    @nn.compact
    def __call__(self, x: Array, amask: AttentionMask) -> Array:
        c = self.config
        N, K = c.num_heads, c.head_dim
        dropout = c.attention_dropout_rate > 0 and not self.deterministic
        fold = c.fold_attention_biases and not dropout  # exact only without attention dropout
        if c.fold_attention_biases and c.fused_qkv:
            raise ValueError("model.fold_attention_biases and model.fused_qkv cannot be "
                             "combined (the fused product adds all three biases in one pass)")
        value_bias = None
        if c.fused_qkv:
            q, k, v = _fused_qkv(c, x)  # each [B, L, N, K]
        else:
            q = dense(c, (N, K), ("embed", "heads", "kv"), "query")(x)  # [B, L, N, K]
            k = dense(c, (N, K), ("embed", "heads", "kv"), "key", use_bias=not fold)(x)
            value = dense(c, (N, K), ("embed", "heads", "kv"), "value", use_bias=not fold)
            v = value(x)  # k, v: [B, S, N, K]
            if fold:
                value_bias = nn.unbox(value.variables["params"]["bias"])  # [N, K]
        impl = attention_implementation(c, dropout)
        if impl == "pallas":
            rate = c.attention_dropout_rate if dropout else 0.0
            seed = (jax.random.bits(self.make_rng("dropout"), (2,), jnp.uint32) if dropout
                    else jnp.zeros((2,), jnp.uint32))
            out = flash_attention.attention(q, k, v, seed=seed, rate=rate,
                                            **_flash_masks(amask, k.shape[1]))
        elif impl == "xla" and _attention_core(c):  # bf16 on the CPU; with or without dropout
            keep = None
            if dropout:
                B, L, N, _ = q.shape
                keep = jax.random.bernoulli(self.make_rng("dropout"),
                                            1 - c.attention_dropout_rate, (B, N, L, k.shape[1]))
            out = cpu_attention.attention(q, k, v, _dense_mask(amask, k.shape[1]), keep,
                                          c.attention_dropout_rate)
        elif dropout or _cpu_float16(c):
            # The explicit path: dot_product_attention has no dropout on the weights, and its
            # XLA path asks for float16 x float16 -> float32 products, which CPUs do not support.
            logits = jnp.einsum("BLNK,BSNK->BNLS", q, k).astype(jnp.float32) / jnp.sqrt(K)
            logits = jnp.where(_dense_mask(amask, k.shape[1]), logits,
                               jnp.finfo(jnp.float32).min)
            weights = jax.nn.softmax(logits, axis=-1).astype(c.dtype)  # [B, N, L, S]
            if dropout:
                weights = nn.Dropout(c.attention_dropout_rate)(weights, deterministic=False)
            out = jnp.einsum("BNLS,BSNK->BLNK", weights, v)
        else:
            out = jax.nn.dot_product_attention(
                q, k, v, mask=amask.mask, key_value_seq_lengths=amask.kv_lengths,
                implementation=impl)  # [B, L, N, K]
        return dense(c, c.hidden_size, ("heads", "kv", "embed"), "out", axis=(-2, -1),
                      split_bias=self.split_bias)(out, input_shift=value_bias)


class Layer(nn.Module):
    """One post-LayerNorm transformer block (BERT's layout, as RoBERTa keeps it)."""
    config: RobertaConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x: Array, amask: AttentionMask):
        c = self.config
        fused = c.fused_norm  # the sublayers' output biases are added in the fused kernel
        add_norm = self._fused_add_norm() if fused else self._add_norm()
        h = SelfAttention(c, self.deterministic, split_bias=fused, name="attn")(x, amask)
        x = add_norm("attn_norm", x, h)
        h = gelu(dense(c, c.intermediate_size, ("embed", "mlp"), "up")(x),
                 c.gelu_approximate)  # [B, L, F]
        h = dense(c, c.hidden_size, ("mlp", "embed"), "down", split_bias=fused)(h)  # [B, L, D]
        x = add_norm("mlp_norm", x, h)
        self.sow("intermediates", "hidden_states", x)  # kept only where asked (`hidden_states`)
        return x, None

    def _add_norm(self):
        """(name, x, h) -> LayerNorm(x + dropout(h)), the norm named `name`."""
        c = self.config
        drop = functools.partial(nn.Dropout(c.dropout_rate), deterministic=self.deterministic)
        return lambda name, x, h: layer_norm(c, name)(x + drop(h))

    def _fused_add_norm(self):
        """The same through `fused_norm`, with the dropout keys nn.Dropout would draw here."""
        c = self.config
        rate = 0.0 if self.deterministic else c.dropout_rate
        keys = DropoutKey(name="Dropout_0") if rate else None  # nn.Dropout's name and keys

        def add_norm(name, x, h_and_bias):
            h, h_bias = h_and_bias
            return ResidualNorm(c, name=name)(x, h, h_bias,
                                              hash_key_words(keys()) if rate else None, rate)
        return add_norm


class Embeddings(nn.Module):
    config: RobertaConfig
    deterministic: bool

    def setup(self):
        c = self.config
        self.tokens = nn.Embed(c.padded_vocab_size, c.hidden_size, dtype=c.dtype,
                               param_dtype=c.param_dtype,
                               embedding_init=embed_init(c, ("vocab", "embed")))
        self.positions = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=c.dtype,
                                  param_dtype=c.param_dtype,
                                  embedding_init=embed_init(c, (None, "embed")))
        self.types = nn.Embed(c.type_vocab_size, c.hidden_size, dtype=c.dtype,
                              param_dtype=c.param_dtype,
                              embedding_init=normal_init(c, (None, "embed")))
        self.norm = layer_norm(c, "norm")
        self.dropout = nn.Dropout(c.dropout_rate)

    def __call__(self, input_ids: Array, position_ids: Array) -> Array:
        x = self.tokens(input_ids) + self.positions(position_ids)  # [B, L, D]
        x = x + self.types.embedding[0].astype(x.dtype)  # the one token-type row, added to all
        return self.dropout(self.norm(x), deterministic=self.deterministic)

    def attend(self, h: Array) -> Array:
        """Logits against the token table (the tied output projection): [..., D] -> [..., V]."""
        return self.tokens.attend(h)


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Encoder(nn.Module):
    """Embeddings and the stack of layers (scanned: one compiled layer, Y stacked weights)."""
    config: RobertaConfig
    deterministic: bool = True

    def setup(self):
        c = self.config
        self.embed = Embeddings(c, self.deterministic)
        layer = Layer
        if c.remat != "none":
            if c.remat not in _REMAT_POLICIES:
                raise ValueError(f"model.remat must be none, full or dots, got {c.remat!r}")
            layer = nn.remat(Layer, prevent_cse=False, policy=_REMAT_POLICIES[c.remat])
        self.layers = nn.scan(
            layer, variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=nn.broadcast, length=c.num_layers, unroll=c.layers_per_scan_step,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c, self.deterministic)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, segment_ids=None,
                 kv_lengths=None) -> Array:
        c = self.config
        if input_ids.shape[-1] > c.max_length:
            raise ValueError(f"input length {input_ids.shape[-1]} exceeds the model's maximum "
                             f"{c.max_length} (max_position_embeddings "
                             f"{c.max_position_embeddings})")
        if position_ids is None:
            position_ids = position_ids_from_input_ids(input_ids, c.pad_token_id)
        amask = make_attention_mask(input_ids, c.pad_token_id, attention_mask, segment_ids,
                                    kv_lengths)
        x = self.embed(input_ids, position_ids)
        self.sow("intermediates", "embeddings", x)
        x, _ = self.layers(x, amask)
        return x  # [B, L, D]

    def attend(self, h):
        return self.embed.attend(h)


def hidden_states(config: RobertaConfig, encoder_params, input_ids: Array,
                  attention_mask: Optional[Array] = None) -> Array:
    """Every layer's output: [num_layers + 1, B, L, D], the embeddings' (after their LayerNorm)
    first and the last layer's last, as transformers' `output_hidden_states=True` and fairseq's
    `extract_features(..., return_all_hiddens=True)` give them. encoder_params: a model's
    params["encoder"]; attention_mask as for `Encoder` (None: every non-pad token)."""
    _, state = Encoder(config).apply({"params": encoder_params}, input_ids, attention_mask,
                                     mutable=["intermediates"])
    sown = state["intermediates"]
    (embeddings,), (layers,) = sown["embeddings"], sown["layers"]["hidden_states"]
    return jnp.concatenate([embeddings[None], layers], axis=0)


class MaskedLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> tied projection + bias."""
    config: RobertaConfig

    @nn.compact
    def __call__(self, h: Array, encoder: Encoder) -> Array:
        c = self.config
        h = gelu(dense(c, c.hidden_size, ("embed", "embed_out"), "dense")(h))  # always erf
        h = layer_norm(c, "norm")(h)
        bias = self.param("bias", zeros_init(("vocab",)), (c.padded_vocab_size,), c.param_dtype)
        if jax.default_backend() == "cpu":  # same numbers, a faster backward on XLA:CPU
            table = encoder.embed.tokens.embedding.astype(c.dtype)
            return cpu_products.tied_logits(h.astype(c.dtype), table, bias.astype(c.dtype),
                                            cpu_mkl(c))  # [..., V]
        logits = encoder.attend(h)  # [..., V]
        return logits + bias.astype(logits.dtype)


class ClassificationHead(nn.Module):
    """RoBERTa's sentence head on the <s> vector: dropout, dense, tanh, dropout, projection."""
    config: RobertaConfig
    num_labels: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x0: Array) -> Array:
        c = self.config
        drop = functools.partial(nn.Dropout(c.dropout_rate), deterministic=self.deterministic)
        h = jnp.tanh(dense(c, c.hidden_size, ("embed", "embed_out"), "dense")(drop(x0)))
        return dense(c, self.num_labels, ("embed", None), "out")(drop(h))


def gather_positions(x: Array, positions: Array, onehot: bool = True) -> Array:
    """x [B, L, D], positions [B, P] -> [B, P, D]. onehot: as a product with one-hot rows
    (exact: one term each; the backward adds a repeated position's gradients in float32).
    take_along_axis's backward scatters into a zero [B, L, D] buffer, and XLA:GPU shared that
    buffer with every dropout's select, which then read it (100 MB more read in each of 50
    kernels of the base step at batch 128): the one-hot form cut the step's estimate
    (tools/gpu_aot.py) from 101.0 to 99.3 ms (base) and 154.1 to 151.9 ms (large)."""
    if not onehot:
        return jnp.take_along_axis(x, positions[..., None], axis=1)
    rows = (positions[..., None] == jnp.arange(x.shape[1])).astype(x.dtype)  # [B, P, L]
    exact = lax.Precision.HIGHEST if x.dtype == jnp.float32 else None  # no TF32 rounding
    return jnp.einsum("BPL,BLD->BPD", rows, x, precision=exact)


@dataclasses.dataclass
class PretrainingOutput:
    mlm_logits: Array  # [B, P, V] at masked_positions (or [B, L, V])
    nsp_logits: Optional[Array] = None  # [B, K, 2]: one per packed input (K = 1 unpacked)


jax.tree_util.register_dataclass(PretrainingOutput, data_fields=["mlm_logits", "nsp_logits"],
                                 meta_fields=[])


class RobertaForPretraining(nn.Module):
    """Encoder + MLM head (+ an NSP head for the paper's *-PAIR+NSP ablations).

    With `masked_positions` [B, P] the vocabulary projection runs only there (~15% of tokens).
    Logits keep the padded vocabulary; rows past `vocab_size` are masked to a large negative.
    """
    config: RobertaConfig
    nsp: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic=True, *, position_ids=None,
                 segment_ids=None, kv_lengths=None, masked_positions=None,
                 nsp_positions=None) -> PretrainingOutput:
        c = self.config
        encoder = Encoder(c, deterministic, name="encoder")
        x = encoder(input_ids, attention_mask, position_ids, segment_ids, kv_lengths)
        h = x if masked_positions is None else gather_positions(x, masked_positions,
                                                                 c.gather_onehot)
        logits = MaskedLMHead(c, name="mlm_head")(h, encoder)
        if c.padded_vocab_size != c.vocab_size:
            real = jnp.arange(c.padded_vocab_size) < c.vocab_size
            logits = jnp.where(real, logits, jnp.finfo(logits.dtype).min)
        nsp_logits = None
        if self.nsp:  # BERT's NSP classifier, on each input's <s> vector
            starts = x[:, :1] if nsp_positions is None else gather_positions(
                x, nsp_positions, c.gather_onehot)
            nsp_logits = ClassificationHead(c, 2, deterministic, name="nsp_head")(starts)
        return PretrainingOutput(logits, nsp_logits)


class RobertaForMaskedLM(nn.Module):
    """The public contract: `apply({"params": p}, input_ids, attention_mask=None,
    deterministic=True)` -> logits [B, L, vocab_size]."""
    config: RobertaConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic=True, *, position_ids=None,
                 segment_ids=None, masked_positions=None) -> Array:
        c = self.config
        encoder = Encoder(c, deterministic, name="encoder")
        x = encoder(input_ids, attention_mask, position_ids, segment_ids)
        h = x if masked_positions is None else gather_positions(x, masked_positions,
                                                                 c.gather_onehot)
        return MaskedLMHead(c, name="mlm_head")(h, encoder)[..., :c.vocab_size]


class RobertaForSequenceClassification(nn.Module):
    """Classification (num_labels > 1) or regression (num_labels == 1, STS-B)."""
    config: RobertaConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic=True) -> Array:
        x = Encoder(self.config, deterministic, name="encoder")(input_ids, attention_mask)
        return ClassificationHead(self.config, self.num_labels, deterministic,
                                  name="classifier")(x[:, 0])  # [B, num_labels]


@dataclasses.dataclass
class SpanOutput:
    start_logits: Array  # [B, L]
    end_logits: Array  # [B, L]
    answerable_logits: Optional[Array] = None  # [B, 2] (SQuAD v2.0)


jax.tree_util.register_dataclass(SpanOutput, data_fields=["start_logits", "end_logits",
                                                          "answerable_logits"], meta_fields=[])


class RobertaForQuestionAnswering(nn.Module):
    """Start/end logits per token; for SQuAD v2.0 also an answerable classifier on <s>."""
    config: RobertaConfig
    answerable_head: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic=True) -> SpanOutput:
        c = self.config
        x = Encoder(c, deterministic, name="encoder")(input_ids, attention_mask)
        se = dense(c, 2, ("embed", None), "span")(x).astype(jnp.float32)  # [B, L, 2]
        answerable = None
        if self.answerable_head:
            answerable = ClassificationHead(c, 2, deterministic, name="answerable")(x[:, 0])
        return SpanOutput(se[..., 0], se[..., 1], answerable)


class RobertaForMultipleChoice(nn.Module):
    """RACE: each choice encoded separately; one score per choice from its <s> vector."""
    config: RobertaConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic=True) -> Array:
        B, C, L = input_ids.shape
        flat_mask = None if attention_mask is None else attention_mask.reshape(B * C, L)
        x = Encoder(self.config, deterministic, name="encoder")(input_ids.reshape(B * C, L),
                                                               flat_mask)
        scores = ClassificationHead(self.config, 1, deterministic, name="classifier")(x[:, 0])
        return scores.reshape(B, C)  # [B, C]


NO_CANDIDATE = -1e9  # RobertaForCandidateScoring's score of an empty (padding) candidate row


class RobertaForCandidateScoring(nn.Module):
    """Winograd schemas (WNLI and WSC, Section 5.1): how likely the pretrained masked LM finds
    each candidate in a pronoun's place. input_ids [..., 2, L]: [..., 0, :] the text with the
    candidate's tokens replaced by <mask>, [..., 1, :] the candidate's tokens at those positions
    and <pad> elsewhere; attention_mask [..., L] of the masked text (None: its non-pad tokens).
    Returns the mean log-probability of the candidate's tokens at their positions [...]
    (float32; NO_CANDIDATE for a row without any): fairseq's WSC score. With `span` > 0 (at
    least any row's candidate tokens) the head runs only on that many positions a row."""
    config: RobertaConfig
    span: int = 0

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic=True) -> Array:
        c = self.config
        lead, L = input_ids.shape[:-2], input_ids.shape[-1]
        ids = input_ids.reshape(-1, 2, L)
        masked, target = ids[:, 0], ids[:, 1]
        real = None if attention_mask is None else attention_mask.reshape(-1, L)
        encoder = Encoder(c, deterministic, name="encoder")
        h = encoder(masked, real)
        if self.span:  # the candidate's positions first, then as many others as fill `span`
            pos = jnp.argsort(target == c.pad_token_id, axis=-1, stable=True)[:, :self.span]
            h = gather_positions(h, pos, c.gather_onehot)
            target = jnp.take_along_axis(target, pos, axis=-1)
        logits = MaskedLMHead(c, name="mlm_head")(h, encoder)[..., :c.vocab_size]
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        tok = jnp.take_along_axis(lp, target[..., None], axis=-1)[..., 0]  # [N, span or L]
        scored = target != c.pad_token_id
        n = scored.sum(-1)
        mean = jnp.where(scored, tok, 0.0).sum(-1) / jnp.maximum(n, 1)
        return jnp.where(n > 0, mean, NO_CANDIDATE).reshape(lead)


def init_params(module: nn.Module, rng: Array, length: int = 8, batch_shape=(1,)):
    """Unboxed float32 parameters of `module` (for tests and small models), initialized in one
    jitted computation (run op by op, a tiny model's init took 7 s on a 2-core CPU; jitted, 2.6)."""
    ids = jnp.full((*batch_shape, length), 5, jnp.int32)
    return jax.jit(lambda r, i: nn.unbox(module.init(r, i)["params"]))(rng, ids)


def abstract_params(module: nn.Module, length: int = 8, batch_shape=(1,)):
    """Shapes (and logical axis boxes) of the parameters, computed without memory."""
    ids = jax.ShapeDtypeStruct((*batch_shape, length), jnp.int32)
    return jax.eval_shape(lambda r, i: module.init(r, i)["params"], jax.random.key(0), ids)


def count_params(tree, config: RobertaConfig | None = None) -> int:
    """Parameters in `tree`. With `config`, the vocabulary's padding rows (`pad_vocab_to`) are
    not counted, so the number is the checkpoint's in any format (transformers' count)."""
    leaves = jax.tree_util.tree_leaves_with_path(nn.unbox(tree))
    total = sum(int(x.size) for _, x in leaves)
    if config is None or config.padded_vocab_size == config.vocab_size:
        return total
    for path, x in leaves:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if tuple(x.shape[:1]) == (config.padded_vocab_size,) and (
                name.endswith("tokens/embedding") or name.endswith("mlm_head/bias")):
            total -= int(x.size) // config.padded_vocab_size * (
                config.padded_vocab_size - config.vocab_size)
    return total
