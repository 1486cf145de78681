"""What a run reports: `metrics.jsonl`, TensorBoard events (tensorboardX, no TensorFlow) and the
end-of-run summary.

`metrics.jsonl` has one JSON object per line with `step`; train rows carry `loss` (MLM, nats per
masked token), `loss_bits` (fairseq reports base 2), `learning_rate`, `tokens_per_sec`, ...;
eval rows carry `eval_loss` and `eval_perplexity`.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax


class MetricWriter:
    """metrics.jsonl + TensorBoard events in `workdir`. `resumed_at`: the step a resumed run
    starts from; rows and events an interrupted run wrote past it are dropped (it writes them
    again), from metrics.jsonl here and by TensorBoard's purge_step."""

    def __init__(self, workdir: str, enabled: bool | None = None, resumed_at: int = 0):
        # Only the first host writes in a multi-host run.
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self.dropped = 0
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if resumed_at:
                self.dropped = self._drop_after(resumed_at)
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                     purge_step=resumed_at + 1 if resumed_at else None)

    def write(self, step: int, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if hasattr(v, "__float__") else v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")
        for k, v in clean.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def _drop_after(self, step: int) -> int:
        """Removes metrics.jsonl rows past `step` (a killed run logged steps its last checkpoint
        does not hold); returns how many."""
        if not os.path.exists(self.path):
            return 0
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        keep = [line for line in lines if json.loads(line)["step"] <= step]
        if len(keep) < len(lines):
            with open(self.path, "w") as f:
                f.writelines(keep)
        return len(lines) - len(keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class Throughput:
    """Tokens and sequences per second between two log points (wall clock, host side)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.t0, self.tokens, self.seqs = time.perf_counter(), 0, 0

    def add(self, tokens: int, seqs: int):
        self.tokens += tokens
        self.seqs += seqs

    def rates(self) -> tuple[float, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        return self.tokens / dt, self.seqs / dt


def summary(first: dict, last: dict, steps: int, tokens: int, seconds: float,
            eval_first: dict | None = None, eval_last: dict | None = None) -> str:
    """The end-of-run lines. `first`/`last`: the metrics of the first and last logging window
    (means over log_every steps), the same dict when there was one window (no fall to report);
    likewise `eval_first`/`eval_last` for evaluations."""
    lines = [f"trained {steps} steps, {tokens:,} tokens in {seconds:.1f} s "
             f"({tokens / max(seconds, 1e-9):,.0f} tokens/s)"]
    if first is last:  # one logging window
        lines.append(f"train loss {last['loss']:.3f} nats (perplexity "
                     f"{math.exp(last['loss']):.1f}) over the run's one logging window; set "
                     f"log_every below {steps} steps to see it fall")
    else:
        lines.append(f"train loss {first['loss']:.3f} -> {last['loss']:.3f} nats "
                     f"(perplexity {math.exp(first['loss']):.1f} -> "
                     f"{math.exp(last['loss']):.1f}; "
                     f"{'fell' if last['loss'] <= first['loss'] else 'rose'} "
                     f"{abs(first['loss'] - last['loss']):.3f} nats)")
    if eval_last and eval_first is eval_last:  # one evaluation
        lines.append(f"eval loss  {eval_last['eval_loss']:.3f} nats (perplexity "
                     f"{eval_last['eval_perplexity']:.1f}), one evaluation")
    elif eval_first and eval_last:
        lines.append(f"eval loss  {eval_first['eval_loss']:.3f} -> {eval_last['eval_loss']:.3f} "
                     f"nats (perplexity {eval_first['eval_perplexity']:.1f} -> "
                     f"{eval_last['eval_perplexity']:.1f})")
    return "\n".join(lines)
