"""What robertax's Triton attention kernels compile to on an H100, without one: PTX counts.

Compiles `flash_attention.attention` forward + backward (base's shapes: 12 heads of 64, 512
tokens, bf16) for a compile-only H100, once without dropout and once with `--rate`, has XLA dump
the PTX, and prints for each kernel the instructions in its inner loop (the largest block that
a backward branch closes) and the counts of the instructions that show how data moves:
shared-memory stores and loads, barriers, warp shuffles and local-memory (spill) accesses.

The roofline of tools/hlo_cost.py takes the larger of a kernel's products and its integer work,
as if they overlapped perfectly; the loop's instruction count shows what the dropout hash adds
to the work every thread issues, whatever the overlap. Counts, not times: only
tools/bench_attention.py on a card measures.

Needs JAX's CUDA plugin, as tools/gpu_aot.py does (its docstring: /tmp/aot), at jax 0.10.2:
jax 0.11.2's XLA compiles the kernels for a compile-only H100 too (with the device set as
below) but dumps no PTX for them.

    JAX_PLATFORMS=cpu /tmp/aot/bin/python tools/kernel_ptx.py [--rate=0.1] [--batch=16] \
        [--pallas_configs=64x64/64/4/2,128x64/64/4/3,128x128/64/8/2]

Other block and launch settings (`--pallas_configs`) show whether a setting spills registers to
local memory before the card times it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_COUNTED = {"st.shared": r"\bst\.shared", "ld.shared": r"\bld\.shared", "bar": r"\bbar\.sync",
            "shfl": r"\bshfl\.", "local": r"\b(ld|st)\.local", "wgmma": r"\bwgmma\.mma_async"}


def _is_instruction(line: str) -> bool:
    return bool(re.match(r"^\s+(@!?%p\d+\s+)?[a-z]", line))


def loop_instructions(ptx: str) -> int:
    """Instructions in the largest block from a label to a branch back to it (the loop)."""
    lines = ptx.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines)
              if (m := re.match(r"^(\$L__\w+):", line.strip()))}
    best = 0
    for i, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if m and labels.get(m.group(1), i) < i:
            best = max(best, sum(map(_is_instruction, lines[labels[m.group(1)]:i + 1])))
    return best


def kernel_counts(ptx: str) -> dict:
    """The loop's instruction count and the data-movement counts of one kernel's PTX."""
    out = {"loop": loop_instructions(ptx)}
    for name, pattern in _COUNTED.items():
        out[name] = sum(1 for line in ptx.splitlines()
                        if _is_instruction(line) and re.search(pattern, line))
    return out


def compile_and_dump(rate: float, batch: int, dump: str, setting: dict) -> dict:
    """{kernel name: kernel_counts} for one compilation of forward + backward, with the
    flash_attention module settings `setting` (BLOCK_Q, ..., NUM_STAGES)."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    from robertax import flash_attention as fa
    from tools.gpu_aot import H100

    device = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                          target_config=H100).devices[0]
    for key, value in setting.items():
        setattr(fa, key, value)
    real_backend = jax.default_backend
    jax.default_backend = lambda: "gpu"  # the kernels take their Triton path, not the interpreter
    try:
        def loss(q, k, v, w, seed):
            return (fa.attention(q, k, v, None, seed, rate).astype(jnp.float32) * w).sum()

        sh = SingleDeviceSharding(device)
        x = jax.ShapeDtypeStruct((batch, 512, 12, 64), jnp.bfloat16, sharding=sh)
        w = jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=sh)
        seed = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sh)
        # Pallas's Triton lowering asks the default device for the GPU's compute capability
        # (jax >= 0.11): make it the compile-only H100.
        with jax.default_device(device):
            jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, w, seed).compile()
    finally:
        jax.default_backend = real_backend
    out = {}
    if not glob.glob(os.path.join(dump, "*.ptx")):
        raise SystemExit(f"XLA dumped no PTX into {dump} under jax {jax.__version__} (0.11.2's "
                         f"XLA dumps none for a compile-only GPU; use 0.10.2's CUDA plugin)")
    for path in glob.glob(os.path.join(dump, "*.ptx")):
        text = open(path).read()
        m = re.search(r"\.entry (flash_attention_\w+)", text)
        if m:
            out[m.group(1)] = kernel_counts(text)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=0.1, help="attention dropout to compare")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pallas_configs", default="",
                    help="comma-separated BLOCK_QxBLOCK_K/BLOCK_BWD/WARPS/STAGES (as "
                         "tools/bench_attention.py takes them) to compile with dropout too")
    args = ap.parse_args(argv)
    from tools.bench_attention import parse_config
    runs = [("", 0.0, {}), ("", args.rate, {})] + [
        (text, args.rate, parse_config(text))
        for text in filter(None, args.pallas_configs.split(","))]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = {}
    for text, rate, setting in runs:
        # XLA reads its flags once per process: each compilation dumps from a process of its own.
        with tempfile.TemporaryDirectory() as dump:
            env = {**os.environ, "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": f"--xla_gpu_autotune_level=0 --xla_dump_to={dump} "
                                + os.environ.get("XLA_FLAGS", "")}
            code = (f"import json, sys; sys.path.insert(0, {root!r}); "
                    f"from tools.kernel_ptx import compile_and_dump; "
                    f"print(json.dumps(compile_and_dump({rate!r}, {args.batch!r}, {dump!r}, "
                    f"{setting!r})))")
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            rows.update({f"{name} {text}".strip(): counts for name, counts in
                         sorted(json.loads(done.stdout.strip().splitlines()[-1]).items())})
    cols = ["loop", *_COUNTED]
    print(f"robertax.flash_attention on a compile-only H100, B={args.batch} L=512 N=12 K=64 bf16"
          f" (PTX instruction counts; loop: the inner loop's instructions)")
    print(f"{'kernel':<44}" + "".join(f"{c:>10}" for c in cols))
    for name in rows:
        print(f"{name:<44}" + "".join(f"{rows[name][c]:>10}" for c in cols))


if __name__ == "__main__":
    main()
