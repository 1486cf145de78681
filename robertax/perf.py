"""Model FLOPs per token and utilization (MFU) against a device's peak.

FLOPs per trained token (forward + backward = 3 x forward, 2 FLOPs per multiply-add):
    72·L·H²        the layers' matrix products (Q, K, V, out: 4H², FFN: 8H², x 6)
  + 12·L·H·T       attention scores and weighted sums over T positions
  + 6·f·(H² + H·V) the MLM head's dense layer and vocabulary projection, run on a fraction f
                   of positions (f = 1 for a full head; ~0.15 when gathered at masked positions)
Embedding lookups, LayerNorm, softmax and biases are left out, as is customary.
This assumes FFN = 4H (RoBERTa's); other widths use the general term 24·L·H·F + 48·L·H².
"""

from __future__ import annotations

import dataclasses

import jax

# Dense bf16 peak (no sparsity), FLOP/s. MFU is reported only where the peak is known.
PEAK_FLOPS = {
    "H100": 989e12,  # SXM; the reference
    "H200": 989e12,  # same compute die as H100 SXM
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
}


@dataclasses.dataclass(frozen=True)
class FlopTerms:
    layers: float
    attention: float
    head: float

    @property
    def total(self) -> float:
        return self.layers + self.attention + self.head


def flops_per_token(num_layers: int, hidden: int, length: int, vocab: int, head_fraction: float,
                    intermediate: int | None = None) -> FlopTerms:
    L, H, T, V, f = num_layers, hidden, length, vocab, head_fraction
    F = 4 * H if intermediate is None else intermediate
    layers = 6 * L * (4 * H * H + 2 * H * F)  # = 72·L·H² when F = 4H
    return FlopTerms(layers=float(layers), attention=float(12 * L * H * T),
                     head=float(6 * f * (H * H + H * V)))


def device_peak_flops(device=None) -> float | None:
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None


def mfu(tokens_per_sec: float, flops_per_tok: float, num_devices: int, peak: float | None):
    if not peak:
        return None
    return tokens_per_sec * flops_per_tok / (num_devices * peak)
