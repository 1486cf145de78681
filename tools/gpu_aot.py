"""The pretraining step compiled for an H100 on a machine without one, and what its kernels move.

XLA compiles for a GPU it does not have when given the GPU's description (a "deviceless" PJRT
topology). This compiles the real train step (`robertax.train.build`, the same jit as training)
for one H100 (`--target=h200`: an H200), once per variant, and prints what each compilation's
kernels read and write, the FLOPs of its products and attention, its memory plan, and a
roofline time (tools/hlo_cost.py).
Use it to screen a fast path on the CPU before spending GPU minutes on it: a switch that does
not cut the bytes moved will not make the step faster. The times are estimates; only
tools/bench_train.py on a GPU measures.

Needs JAX's CUDA plugin, which the project's requirements leave out (~6 GB with its NVIDIA
wheels); in its own environment:

    python3 -m venv /tmp/aot && /tmp/aot/bin/pip install -r requirements.txt "jax[cuda12]==0.10.2"
    JAX_PLATFORMS=cpu /tmp/aot/bin/python tools/gpu_aot.py --config=configs/base.py \\
        --config.batch_size=128 --config.microbatches=1 --config.precision=bfloat16 \\
        --config.model.attention_dropout_rate=0 --config.dropout_rng=rbg \\
        --variant=lnvjp:model.layer_norm_vjp=True --variant=scanned:model.scan_unroll=1

The GPU image's jax 0.11.2 needs Python 3.12 on PyPI (`python3.12 -m venv /tmp/aot12`, then the
same install with "jax[cuda12]==0.11.2"); its compilations give the same estimates.
(JAX_PLATFORMS=cpu keeps the plugin from looking for a GPU; the model's backend checks are told
"gpu", so it takes the paths it takes on a GPU: cuDNN attention, XLA products.) Autotuning needs
the device, so XLA picks its kernels' default configurations (--xla_gpu_autotune_level=0).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = ("--xla_gpu_autotune_level=0 " + os.environ.get("XLA_FLAGS", "")).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import hlo_cost  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "Model/training config.")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "LABEL:key=value[,key=value]: also compile the config with these overrides "
    "(keys as in --config.KEY; values parsed as Python literals, else strings).")
_XLA = flags.DEFINE_multi_string(
    "xla_variant", [], "LABEL:--flag=value[ --flag=value]: also compile the base config with "
    "these XLA flags (each variant compiles in a fresh process).")
_INT_RATE = flags.DEFINE_float("int_rate", hlo_cost.INT_OPS / 1e12, "Integer operations per "
                                "second (T) in elementwise kernels; 0 leaves them out (the "
                                "estimates before 2026-12-07).")
_TOP = flags.DEFINE_integer("top", 0, "Also list the N kernels with the largest estimates.")
_HLO = flags.DEFINE_string("hlo_dir", None, "Write each variant's optimized HLO text here.")
_JSON = flags.DEFINE_string("json_out", None, "Append one JSON line per variant here.")
_TARGET = flags.DEFINE_enum("target", "h100", ["h100", "h200", "local"], "h100, h200: compile "
                            "for that card without one; local: for this machine's devices (a "
                            "rehearsal of the tool itself: the model takes this backend's paths).")

# The H100 SXM 80GB as XLA describes it (its TargetConfig text format): the numbers nvidia-smi
# and the CUDA device query give for the card.
H100 = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

# The H200 (SXM, 141 GB HBM3e at 4.8 TB/s): the same GH100 chip, SM count and clocks as the
# H100 SXM; only memory size and bandwidth differ (XLA's fusion cost model sees the faster
# memory: the base step compiles to 1,144 kernels instead of 1,119). The size is the ~139 GiB
# the device tool reports for the lent card.
H200 = (H100.replace("memory_bandwidth: 3352320000000", "memory_bandwidth: 4800000000000")
        .replace("device_memory_size: 84929347584", "device_memory_size: 149250000000")
        .replace("NVIDIA H100 80GB HBM3", "NVIDIA H200"))

# Roofline rates per target (tools/hlo_cost.py): products and attention run at the H100's
# measured rates on both; the H200's HBM is taken at the same fraction of its 4.8 TB/s as the
# H100's 3.0 of its 3.35.
RATES = {"h100": {}, "local": {},
         "h200": {"bandwidth": hlo_cost.BANDWIDTH * 4.8 / 3.35}}


def rates() -> dict:
    return {**RATES[_TARGET.value], "int_rate": _INT_RATE.value * 1e12}


def target_devices():
    """One compile-only H100 (or H200), or (--target=local) this machine's devices."""
    if _TARGET.value == "local":
        return jax.devices()
    from jax.experimental import topologies
    try:
        topo = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                              target_config=H200 if _TARGET.value == "h200"
                                              else H100)
    except (NotImplementedError, RuntimeError) as e:
        raise SystemExit(f"compiling for a GPU needs JAX's CUDA plugin (pip install "
                         f"'jax[cuda12]=={jax.__version__}', see this file's docstring): {e}")
    return topo.devices


def parse_overrides(text: str) -> dict:
    """'a.b=1,c=x' -> {'a.b': 1, 'c': 'x'} (values as Python literals where they parse)."""
    import ast
    out = {}
    for item in filter(None, text.split(",")):
        if "=" not in item:
            raise ValueError(f"--variant override {item!r} is not key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return out


def compile_step(config, devices):
    """The train step's compiled executable for `devices` (compile-only devices work)."""
    from robertax import sharding, train
    real_backend = jax.default_backend
    if devices[0].platform != jax.default_backend():  # compile-only GPU devices
        jax.default_backend = lambda: "gpu"  # the model's backend checks take their GPU paths
    try:
        mesh = sharding.make_mesh(config.mesh, devices)
        run = train.build(config, mesh, materialize=False)
        B, L, P = config.batch_size, config.data.max_length, config.data.max_predictions
        bsh = sharding.batch_sharding(mesh)

        def spec(shape, dtype=jnp.int32):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=bsh)

        batch = {"input_ids": spec((B, L)), "segment_ids": spec((B, L)),
                 "position_ids": spec((B, L)), "mlm_positions": spec((B, P)),
                 "mlm_targets": spec((B, P)), "mlm_weights": spec((B, P), jnp.float32)}
        key = jax.eval_shape(lambda: train.make_dropout_rng(config))
        key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))
        # Pallas's Triton lowering (model.attention="pallas") asks the default device for the
        # GPU's compute capability (jax >= 0.11): make it the compile-only GPU.
        with jax.default_device(devices[0]):
            return run.train_step.lower(run.abstract_state, batch, key).compile()
    finally:
        jax.default_backend = real_backend


def measure(config, label: str, devices) -> dict:
    t0 = time.perf_counter()
    compiled = compile_step(config, devices)
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    if _HLO.value:
        os.makedirs(_HLO.value, exist_ok=True)
        with open(os.path.join(_HLO.value, f"{label}.hlo.txt"), "w") as f:
            f.write(text)
    ks = hlo_cost.kernels(text)
    mem = compiled.memory_analysis()
    return {"label": label, "batch": config.batch_size, "compile_s": compile_s, "kernels": ks,
            "summary": hlo_cost.summary(ks, **rates()),
            "int_gops": sum(k.count * k.int_ops for k in ks) / 1e9,
            "temp_gb": mem.temp_size_in_bytes / 1e9 if mem else None,
            "args_gb": mem.argument_size_in_bytes / 1e9 if mem else None}


def print_table(rows: list) -> None:
    cats = []
    for r in rows:
        cats += [c for c in r["summary"] if c not in cats and c != "total"]
    print(f"\n{'estimated ms (GB moved)':<24}" + "".join(f"{r['label'][:21]:>22}" for r in rows))
    for c in cats + ["total"]:
        cells = []
        for r in rows:
            n, gb, tf, ms = r["summary"].get(c, (0, 0.0, 0.0, 0.0))
            cells.append(f"{ms:8.2f} ({gb:6.1f}) x{n:<4d}")
        print(f"{c:<24}" + "".join(f"{x:>22}" for x in cells))
    print(f"{'seq/s at the estimate':<24}" + "".join(
        f"{r['batch'] * 1e3 / r['summary']['total'][3]:>22.0f}" for r in rows))
    print(f"{'TFLOP (products, attn)':<24}" + "".join(
        f"{r['summary']['total'][2]:>22.2f}" for r in rows))
    print(f"{'temp + args memory GB':<24}" + "".join(
        f"{(r['temp_gb'] or 0) + (r['args_gb'] or 0):>22.1f}" for r in rows))
    print(f"{'integer G-ops':<24}" + "".join(f"{r.get('int_gops', 0):>22.1f}" for r in rows))
    print(f"{'compile s (CPU)':<24}" + "".join(f"{r['compile_s']:>22.0f}" for r in rows))
    rt = rates()
    print("(xN: kernels per step. Roofline: GEMMs %.0f TFLOP/s, attention %.0f, HBM %.1f TB/s, "
          "integer ops %.1f T/s, %.0f us a launch.)" % (
              rt.get("gemm", hlo_cost.GEMM_FLOPS) / 1e12,
              rt.get("attention", hlo_cost.ATTENTION_FLOPS) / 1e12,
              rt.get("bandwidth", hlo_cost.BANDWIDTH) / 1e12, rt["int_rate"] / 1e12,
              hlo_cost.LAUNCH_S * 1e6))


def main(argv):
    del argv
    devices = target_devices()
    base = _CONFIG.value
    rows = [measure(base, "config", devices)]
    for v in _VARIANTS.value:
        label, _, over = v.partition(":")
        cfg = base.copy_and_resolve_references()
        for k, val in parse_overrides(over).items():
            node = cfg
            *path, leaf = k.split(".")
            for p in path:
                node = node[p]
            if leaf not in node:
                raise KeyError(f"--variant {label}: config has no key {k!r}")
            node[leaf] = val
        rows.append(measure(cfg, label, devices))
    for v in _XLA.value:
        row = xla_variant(v)
        if row is not None:
            rows.append(row)
    print_table(rows)
    for r in rows:
        if _TOP.value:
            print(f"\n{r['label']}: the {_TOP.value} largest kernel estimates")
            rt = rates()
            for k in sorted(r["kernels"], key=lambda k: -k.seconds(**rt))[:_TOP.value]:
                print(f"  {1e3 * k.seconds(**rt):7.3f} ms  read {k.read / 1e6:8.1f} MB  write "
                      f"{k.written / 1e6:8.1f} MB  {k.flops / 1e12:6.3f} TFLOP  "
                      f"{k.category:<14} {k.op_name[-70:]}")
        if _JSON.value:
            with open(_JSON.value, "a") as f:
                f.write(json.dumps({"label": r["label"], "batch": r["batch"],
                                    "compile_s": r["compile_s"],
                                    "temp_gb": r["temp_gb"], "args_gb": r["args_gb"],
                                    "int_rate": rates()["int_rate"],
                                    "int_gops": r.get("int_gops"),
                                    "summary": r["summary"]}) + "\n")


def xla_variant(spec: str) -> dict:
    """The base config compiled under other XLA flags, in a subprocess (flags are read once)."""
    import pickle
    import subprocess
    import tempfile
    label, _, xla_flags = spec.partition(":")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "row.pkl")
        args = [a for a in sys.argv[1:] if not a.startswith(("--variant", "--xla_variant",
                                                             "--json_out", "--top"))]
        env = {**os.environ, "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} {xla_flags}",
               "GPU_AOT_ROW": out, "GPU_AOT_LABEL": label}
        r = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:  # e.g. a flag this XLA rejects: say so, go on with the others
            print(f"--xla_variant {label} ({xla_flags}) failed:\n{r.stderr[-1500:]}",
                  file=sys.stderr, flush=True)
            return None
        with open(out, "rb") as f:
            return pickle.load(f)


def _child(argv):
    """In an --xla_variant subprocess: compile the base config, hand the row back."""
    import pickle
    del argv
    row = measure(_CONFIG.value, os.environ["GPU_AOT_LABEL"], target_devices())
    with open(os.environ["GPU_AOT_ROW"], "wb") as f:
        pickle.dump(row, f)


if __name__ == "__main__":
    app.run(_child if os.environ.get("GPU_AOT_ROW") else main)
