"""The pretraining train and eval steps: pure functions of (state, batch), jitted once.

`train_step(state, batch) -> (state, metrics)` does the whole update: gradient accumulation over
microbatches (a scan inside the step, so the paper's 8K-sequence batch fits any device), the
MLM loss on gathered masked positions (plus NSP for the pair formats), dynamic loss scaling for
float16, and AdamW. No logging, host syncs or config reads inside: everything it needs is bound
by `make_train_step`.

The MLM loss is normalized by the number of masked tokens in the *whole* batch (as fairseq's
sample_size), so k microbatches of B/k give exactly the gradient of one batch of B.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from robertax.optim import TrainState

# Batch fields the step reads; the pipeline's other fields (original_ids, example_ids, ...)
# stay on the host.
DEVICE_KEYS = ("input_ids", "segment_ids", "position_ids", "mlm_positions", "mlm_targets",
               "mlm_weights", "nsp_positions", "nsp_labels", "nsp_weights")


def device_batch(batch: dict) -> dict:
    return {k: batch[k] for k in DEVICE_KEYS if k in batch}


def _forward_sums(model, params, mb: dict, *, packed: bool, deterministic: bool, rng) -> dict:
    """Sums (not means) over one microbatch: MLM nll, masked count, correct, NSP nll/correct."""
    seg = mb["segment_ids"]
    out = model.apply(
        {"params": params}, mb["input_ids"], deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
        position_ids=mb["position_ids"],
        segment_ids=seg if packed else None,
        kv_lengths=None if packed else (seg != 0).sum(-1).astype(jnp.int32),
        masked_positions=mb["mlm_positions"], nsp_positions=mb.get("nsp_positions"))
    logits = out.mlm_logits.astype(jnp.float32)  # [B, P, V]
    targets, w = mb["mlm_targets"], mb["mlm_weights"].astype(jnp.float32)  # [B, P]
    logp = jax.nn.log_softmax(logits)
    # One-hot, not take_along_axis: XLA's SPMD partitioner mis-partitions the backward of that
    # gather (a scatter into vocab-sharded logits) on meshes with data, fsdp and tensor all > 1
    # (jax 0.10.2; caught by tests/test_train_step.py; tools/repro_spmd_take_along_axis.py).
    # So does the nll as logsumexp minus the one-hot target logit (faster on CPU; the same
    # test's 2 x 2 x 2 mesh, 6e-4 relative after one step); keep log_softmax.
    nll = -(logp * jax.nn.one_hot(targets, logp.shape[-1], dtype=logp.dtype)).sum(-1)
    sums = {"mlm_nll": (nll * w).sum(), "mlm_count": w.sum(),
            "mlm_correct": ((logits.argmax(-1) == targets) * w).sum()}
    if out.nsp_logits is not None:  # [B, K, 2]: one per packed input, weighted
        labels, nw = mb["nsp_labels"], mb["nsp_weights"].astype(jnp.float32)  # [B, K]
        nsp = out.nsp_logits.astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(nsp, labels)
        sums["nsp_nll"] = (nll * nw).sum()
        sums["nsp_correct"] = ((nsp.argmax(-1) == labels) * nw).sum()
        sums["nsp_count"] = nw.sum()
    return sums


def _split_microbatches(batch: dict, k: int) -> dict:
    return jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, model, tx, schedule,
               microbatches: int, packed: bool, fp16: bool) -> tuple[TrainState, dict]:
    total_masked = jnp.maximum(batch["mlm_weights"].sum(), 1.0)
    total_nsp = jnp.maximum(batch["nsp_weights"].sum(), 1.0) if "nsp_weights" in batch else 1.0
    scale = state.loss_scale.scale
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params, mb, mb_rng):
        sums = _forward_sums(model, params, mb, packed=packed, deterministic=False, rng=mb_rng)
        loss = sums["mlm_nll"] / total_masked
        if "nsp_nll" in sums:
            loss = loss + sums["nsp_nll"] / total_nsp
        return loss * scale, sums

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if microbatches == 1:
        grads, sums = grad_fn(state.params, batch, step_rng)
    else:
        def accumulate(carry, xs):
            i, mb = xs
            g, s = grad_fn(state.params, mb, jax.random.fold_in(step_rng, i))
            return jax.tree.map(jnp.add, carry, (g, s)), None

        zero_g = jax.tree.map(jnp.zeros_like, state.params)
        zero_s = jax.eval_shape(lambda: grad_fn(state.params, _first(batch, microbatches),
                                                step_rng)[1])
        zero_s = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_s)
        (grads, sums), _ = jax.lax.scan(
            accumulate, (zero_g, zero_s),
            (jnp.arange(microbatches), _split_microbatches(batch, microbatches)))
    grads = jax.tree.map(lambda g: g / scale, grads)
    new_state, finite = state.apply_gradients(grads, tx, check_finite=fp16)
    metrics = {
        "loss": sums["mlm_nll"] / total_masked,
        "mlm_accuracy": sums["mlm_correct"] / total_masked,
        "masked_tokens": sums["mlm_count"],
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(new_state.params),
        "learning_rate": schedule(state.step),
        "loss_scale": scale,
        "skipped": (~finite).astype(jnp.int32),
    }
    if "nsp_nll" in sums:
        metrics["nsp_loss"] = sums["nsp_nll"] / total_nsp
        metrics["nsp_accuracy"] = sums["nsp_correct"] / total_nsp
    return new_state, metrics


def _first(batch: dict, k: int) -> dict:
    return jax.tree.map(lambda x: x[: x.shape[0] // k], batch)


def eval_step(params: Any, batch: dict, *, model, packed: bool) -> dict:
    """Sums over the batch, so they add up across batches and devices."""
    return _forward_sums(model, params, batch, packed=packed, deterministic=True, rng=None)


def make_train_step(model, tx, schedule, *, microbatches: int, packed: bool, fp16: bool):
    return functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                             microbatches=microbatches, packed=packed, fp16=fp16)


def make_eval_step(model, *, packed: bool):
    return functools.partial(eval_step, model=model, packed=packed)
