"""The encoder's building blocks, each with the parameters of its Flax counterpart (names,
shapes, initial values, logical axis names) so that checkpoints do not depend on the path taken:
initializers, `Dense` (nn.DenseGeneral, with the CPU's product routes), `LayerNorm`
(nn.LayerNorm through a hand-written VJP), `ResidualNorm` (the residual add, dropout and
LayerNorm as one kernel) and GELU."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import flax.linen as nn
from flax.core import meta
import jax
import jax.numpy as jnp
from jax import lax

from robertax import cpu_products, fused_norm, hash_rng, vjp_ops

if TYPE_CHECKING:
    from robertax.model import RobertaConfig

Array = jax.Array


def normal_init(config: RobertaConfig, names):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


def zeros_init(names):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones_init(names):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def embed_init(config: RobertaConfig, names):
    """N(0, 0.02) with the padding row zero (and rows past the real vocabulary zero)."""
    normal = nn.initializers.normal(config.initializer_range)

    def init(key, shape, dtype=jnp.float32):
        table = normal(key, shape, dtype)
        rows = jnp.arange(shape[0])[:, None]
        keep = (rows != config.pad_token_id)
        if shape[0] == config.padded_vocab_size:
            keep &= rows < config.vocab_size
        return jnp.where(keep, table, 0).astype(dtype)

    return nn.with_logical_partitioning(init, names)


def layer_norm(config: RobertaConfig, name: str) -> nn.Module:
    if config.layer_norm_vjp:
        return LayerNorm(config, name=name)
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.dtype,
                        param_dtype=config.param_dtype, scale_init=ones_init(("embed",)),
                        bias_init=zeros_init(("embed",)), name=name)


class LayerNorm(nn.Module):
    """nn.LayerNorm over the last axis (the same "scale" and "bias" parameters, initial values
    and axis names) through `vjp_ops.layer_norm` (`model.layer_norm_vjp`)."""
    config: RobertaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        shape = (x.shape[-1],)
        scale = self.param("scale", ones_init(("embed",)), shape, c.param_dtype)
        bias = self.param("bias", zeros_init(("embed",)), shape, c.param_dtype)
        # normalized from x as it comes (the embeddings' sum may be float32), as nn.LayerNorm
        return vjp_ops.layer_norm(x, scale, bias, c.layer_norm_eps).astype(c.dtype)


def dense(config: RobertaConfig, features, names, name: str, axis=-1,
          use_bias: bool = True, split_bias: bool = False) -> Dense:
    return Dense(config, features, names, axis, use_bias, split_bias, name=name)


def _reshaped_init(init, flat_shape):
    """Initialize at flat_shape(shape), then reshape (as nn.DenseGeneral does)."""
    def wrapped(rng, shape, dtype=jnp.float32):
        value = init(rng, flat_shape(shape), dtype)
        if isinstance(value, meta.AxisMetadata):
            return meta.replace_boxed(value, jnp.reshape(value.unbox(), shape))
        return jnp.reshape(value, shape)
    return wrapped


def dense_params(module: nn.Module, config: RobertaConfig, names: tuple, in_shape: tuple,
                  features: tuple) -> tuple[Array, Array]:
    """A dense layer's kernel [*in_shape, *features] and bias [*features], created in `module`
    as nn.DenseGeneral creates them (flat initialization, then reshaped)."""
    nf = len(features)
    kernel = module.param("kernel", _reshaped_init(normal_init(config, names), lambda s: (
        math.prod(s[:-nf]), math.prod(s[-nf:]))), in_shape + features, config.param_dtype)
    bias = module.param("bias", _reshaped_init(zeros_init(names[-nf:]), lambda s: (
        math.prod(s),)), features, config.param_dtype)
    return kernel, bias


def cpu_mkl(config: RobertaConfig) -> bool:
    """Whether products run through MKL: on the CPU with cpu_matmul="mkl"."""
    if config.cpu_matmul not in ("xla", "mkl"):
        raise ValueError(f"model.cpu_matmul must be xla or mkl, got {config.cpu_matmul!r}")
    if config.cpu_matmul == "xla" or jax.default_backend() != "cpu":
        return False
    if jnp.dtype(config.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError("model.cpu_matmul='mkl' computes in float32 or bfloat16, got "
                         f"model.dtype={jnp.dtype(config.dtype)}")
    return True


def cpu_dense(config: RobertaConfig) -> Optional[bool]:
    """How dense layers run their product: None, XLA's plain dot_general (off the CPU, and
    float16 on the CPU); else `cpu_products.dense` with this `mkl` (bf16 and float32 on the
    CPU). In float32 the 2-D products and hand-written backward of `cpu_products.dense` ran the
    base model's forward + backward in 0.95 of the plain layers' time on a 2-core AMD EPYC
    (jax 0.10.2): XLA:CPU ran autodiff's products over the [B, L, N, K]-shaped operands slower
    and with more transposing copies."""
    if cpu_mkl(config):
        return True
    if jax.default_backend() == "cpu" and jnp.dtype(config.dtype) in (
            jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)):
        return False
    return None


class Dense(nn.Module):
    """nn.DenseGeneral without batch axes: the same parameters (names, shapes, initial values,
    axis names) and the same operations, except through `cpu_products.dense` on the CPU in bf16
    or with cpu_matmul="mkl"."""
    config: RobertaConfig
    features: Any  # int or tuple
    names: tuple  # logical axis names of the kernel
    axis: Any = -1  # contracted input axes (trailing)
    use_bias: bool = True  # False: the bias is created but not added
    # True: returns (x·W, b), the bias (with input_shift's share) left for the caller to add
    split_bias: bool = False

    @nn.compact
    def __call__(self, x: Array, input_shift: Optional[Array] = None):
        """x·W + b, or (x + input_shift)·W + b computed as x·W + (input_shift·W + b)."""
        c = self.config
        features = self.features if isinstance(self.features, tuple) else (self.features,)
        axis = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        axis = tuple(sorted(a % x.ndim for a in axis))
        in_shape = tuple(x.shape[a] for a in axis)
        kernel, bias = dense_params(self, c, self.names, in_shape, features)
        if input_shift is not None:  # a vector over the contracted axes, in float32
            assert self.use_bias, "input_shift joins the bias"
            bias = bias + jnp.tensordot(input_shift.astype(jnp.float32),
                                        kernel.astype(jnp.float32), len(axis)).astype(bias.dtype)
        split = bias if self.split_bias else None
        add_bias = self.use_bias and split is None
        if not add_bias:
            bias = jnp.zeros_like(bias)
        mkl = cpu_dense(c)
        if mkl is not None and axis == tuple(range(x.ndim - len(axis), x.ndim)):
            # kernel and bias stay in their dtype: cpu_products.dense rounds them itself and
            # returns their gradients unrounded
            K = math.prod(in_shape)
            x = x.astype(c.dtype)
            out = cpu_products.dense(x.reshape(-1, K), kernel.reshape(K, -1), bias.reshape(-1),
                                     mkl)
            out = out.reshape(*x.shape[:x.ndim - len(axis)], *features)
            return out if split is None else (out, split)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=c.dtype)
        out = lax.dot_general(x, kernel, ((axis, tuple(range(len(axis)))), ((), ())))
        if split is not None:
            return out, split
        if not add_bias:
            return out
        return out + jnp.reshape(bias, (1,) * (out.ndim - len(features)) + features)


def gelu(x: Array, approximate: bool = False) -> Array:
    """GELU; RoBERTa uses the exact form x/2 (1 + erf(x/sqrt 2)) (`vjp_ops.gelu_erf`)."""
    return jax.nn.gelu(x, approximate=True) if approximate else vjp_ops.gelu_erf(x)


class DropoutKey(nn.Module):
    """The dropout key that nn.Dropout would draw in its place (give it nn.Dropout's name)."""

    @nn.compact
    def __call__(self) -> Array:
        return self.make_rng("dropout")


def hash_key_words(key: Array) -> Array:
    """A "hash" dropout key's two uint32 words; other generators are refused (the fused
    kernels draw nn.Dropout's masks by hashing)."""
    impl = jax.random.key_impl(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else None
    if impl != jax.random.key_impl(jax.random.key(0, impl=hash_rng.HASH_IMPL)):
        raise ValueError("model.fused_norm draws dropout masks in its kernels with the hash "
                         "generator: set config.dropout_rng='hash' (the dropout key here is "
                         f"{impl or key.dtype})")
    return jax.random.key_data(key)


class ResidualNorm(nn.Module):
    """LayerNorm(x + dropout(h + h_bias)) through `fused_norm.residual_norm`
    (`model.fused_norm`), with nn.LayerNorm's parameters ("scale", "bias": the same names,
    initial values and axes)."""
    config: RobertaConfig

    @nn.compact
    def __call__(self, x: Array, h: Array, h_bias: Array, key_words: Optional[Array],
                 rate: float) -> Array:
        c = self.config
        shape = (x.shape[-1],)
        scale = self.param("scale", ones_init(("embed",)), shape, c.param_dtype)
        bias = self.param("bias", zeros_init(("embed",)), shape, c.param_dtype)
        return fused_norm.residual_norm(x.astype(c.dtype), h.astype(c.dtype), scale, bias,
                                        key_words, rate, c.layer_norm_eps, h_bias=h_bias)
