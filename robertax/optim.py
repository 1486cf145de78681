"""Optimization: AdamW with warmup + linear decay, the decay mask, dynamic loss scaling and the
train state that ties them together.

The paper (Table 9): Adam β1 0.9, β2 0.98, ε 1e-6, weight decay 0.01, no gradient clipping,
linear warmup then linear decay to 0. Gradient accumulation is done by the train step itself
(a scan over microbatches), so it stays inside one jitted step.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


def warmup_linear_decay(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """0 -> peak over `warmup_steps`, then linearly to 0 at `total_steps`.

    Evaluated at the number of the update being made (1 for the first), so no update is
    wasted on a zero learning rate at the start."""
    if total_steps <= 0:
        raise ValueError(f"optim.total_steps must be positive, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup_steps, 1)),
         optax.linear_schedule(peak, 0.0, max(total_steps - warmup_steps, 1))],
        boundaries=[warmup_steps])
    # float32 rounding leaves about -1e-11 at the last step: never a (tiny) ascent
    return lambda count: jnp.maximum(schedule(count), 0.0)


def decay_mask(params, which: str):
    """Which parameters get weight decay.

    "all": every parameter, as fairseq (the paper's code) does. "no_bias_ln": all but biases
    and LayerNorm parameters, as transformers' run_mlm and BERT do.
    """
    if which == "all":
        return jax.tree.map(lambda _: True, params)
    if which == "no_bias_ln":
        def keep(path, _):
            names = [getattr(p, "key", "") for p in path]
            return not (names[-1] in ("bias", "scale") or any("norm" in n for n in names))
        return jax.tree_util.tree_map_with_path(keep, params)
    raise ValueError(f"optim.decay_mask must be 'all' or 'no_bias_ln', got {which!r}")


def make_optimizer(optim_config, params_shape) -> tuple[optax.GradientTransformation,
                                                      optax.Schedule]:
    o = optim_config
    at_step = warmup_linear_decay(o.peak_learning_rate, o.warmup_steps, o.total_steps)
    schedule = lambda count: at_step(count + 1)  # optax counts updates from 0
    parts = []
    if o.grad_clip_norm and o.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                             mask=decay_mask(params_shape, o.decay_mask)))
    return optax.chain(*parts), schedule


@flax.struct.dataclass
class LossScale:
    """Dynamic loss scaling for float16: halve on overflow (and skip the step), double after
    `period` good steps. Unused (scale 1) for float32 and bfloat16."""
    scale: jax.Array
    good_steps: jax.Array
    period: int = flax.struct.field(pytree_node=False, default=2000)

    @classmethod
    def create(cls, enabled: bool, initial: float = 2.0 ** 15, period: int = 2000):
        return cls(jnp.float32(initial if enabled else 1.0), jnp.int32(0), period)

    def update(self, finite: jax.Array) -> "LossScale":
        grow = finite & (self.good_steps + 1 >= self.period)
        scale = jnp.where(finite, jnp.where(grow, self.scale * 2, self.scale),
                          jnp.maximum(self.scale / 2, 1.0))
        good = jnp.where(finite & ~grow, self.good_steps + 1, 0)
        return LossScale(scale.astype(jnp.float32), good.astype(jnp.int32), self.period)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    loss_scale: LossScale
    skipped_steps: jax.Array  # float16 steps skipped because gradients overflowed

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, fp16: bool = False):
        return cls(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                   loss_scale=LossScale.create(fp16), skipped_steps=jnp.int32(0))

    def apply_gradients(self, grads, tx: optax.GradientTransformation, check_finite: bool):
        """One optimizer update. With `check_finite` (float16), a step whose gradients overflowed
        leaves parameters and optimizer state unchanged and lowers the loss scale."""
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        if not check_finite:
            return self.replace(step=self.step + 1, params=params, opt_state=opt_state), \
                jnp.bool_(True)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        return self.replace(
            step=self.step + 1, params=keep(params, self.params),
            opt_state=keep(opt_state, self.opt_state), loss_scale=self.loss_scale.update(finite),
            skipped_steps=self.skipped_steps + (~finite).astype(jnp.int32)), finite
