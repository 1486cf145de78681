"""FLOPs per token and MFU, against numbers worked by hand."""

import pytest

from robertax import perf


def test_flops_per_token_roberta_base_by_hand():
    # L=12, H=768, T=512, V=50265, f = 80/512 = 0.15625 (the gathered head's capacity)
    t = perf.flops_per_token(12, 768, 512, 50265, 80 / 512)
    assert t.layers == 72 * 12 * 768 ** 2 == 509_607_936
    assert t.attention == 12 * 12 * 768 * 512 == 56_623_104
    # 6 * 0.15625 * (589,824 + 38,603,520) = 0.9375 * 39,193,344
    assert t.head == pytest.approx(36_743_760)
    assert t.total == pytest.approx(602_974_800)
    full = perf.flops_per_token(12, 768, 512, 50265, 1.0)  # transformers' full head
    assert full.head == pytest.approx(6 * 39_193_344)


def test_general_ffn_width_reduces_to_72LH2():
    assert perf.flops_per_token(2, 64, 128, 1000, 0.0, intermediate=256).layers == 72 * 2 * 64 ** 2
    # FFN 3H instead of 4H: 6*L*(4H^2 + 2*H*3H) = 60*L*H^2
    assert perf.flops_per_token(2, 64, 128, 1000, 0.0, intermediate=192).layers == 60 * 2 * 64 ** 2


def test_mfu_by_hand():
    # 447,373 tokens/s x 602,974,800 FLOPs/token on one 989 TFLOP/s device = 27.27%
    assert perf.mfu(447_373, 602_974_800, 1, 989e12) == pytest.approx(0.27275, abs=5e-5)
    assert perf.mfu(1000.0, 1e9, 8, 1e12) == pytest.approx(1e12 / 8e12)
    assert perf.mfu(1000.0, 1e9, 1, None) is None  # unknown device: no MFU


def test_peak_table_matches_device_kinds():
    class Dev:
        device_kind = "NVIDIA H100 80GB HBM3"
    assert perf.device_peak_flops(Dev()) == 989e12
    Dev.device_kind = "cpu"
    assert perf.device_peak_flops(Dev()) is None


def test_profile_summary_sums_ops_by_name():
    """tools/profile_summary.py: op time per step, suffixes merged, runtime events left out,
    and only device events when a device process is in the trace."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
    import profile_summary as ps
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}}]
    cpu = [{"ph": "X", "pid": 1, "tid": 1, "name": "fusion.3", "dur": 3000},
           {"ph": "X", "pid": 1, "tid": 2, "name": "fusion.17", "dur": 1000},
           {"ph": "X", "pid": 1, "tid": 1, "name": "ynn_fusion", "dur": 6000},
           {"ph": "X", "pid": 1, "tid": 1, "name": "while.2", "dur": 10000},  # a container
           {"ph": "X", "pid": 1, "tid": 1, "name": "ThunkExecutor::Execute", "dur": 9000},
           {"ph": "X", "pid": 1, "tid": 1, "name": "$profiler.py:1 trace", "dur": 9000}]
    s = ps.summarize(meta + cpu, steps=2)
    assert not s["device"]
    assert s["rows"] == [("ynn_fusion", 3.0, 0.5, 1), ("fusion", 2.0, 1.0, 2)]
    assert s["total_ms"] == 5.0
    gpu = meta + cpu + [
        {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
        {"ph": "X", "pid": 7, "tid": 1, "name": "cutlass_gemm", "dur": 500}]
    s = ps.summarize(gpu)
    assert s["device"] and s["rows"] == [("cutlass_gemm", 0.5, 1.0, 1)]
    assert "cutlass_gemm" in ps.format_table(s)
    assert s["categories"] == {"matmul": 0.5}
    assert "matmul 0.5 ms (100%)" in ps.format_table(s)
    kinds = {n: ps.category(n) for n in (
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma", "nvjet_tst_128x256_64x4",
        "loop_add_fusion", "input_reduce_fusion", "rng_bit_generator", "scatter_fusion",
        "copy_fusion", "ynn_fusion")}
    assert kinds == {
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma": "attention",
        "nvjet_tst_128x256_64x4": "matmul", "loop_add_fusion": "elementwise/other",
        "input_reduce_fusion": "reduction", "rng_bit_generator": "rng",
        "scatter_fusion": "scatter/gather", "copy_fusion": "copy/transpose",
        "ynn_fusion": "matmul"}


def test_gpu_correctness_script_runs_on_cpu():
    """The GPU check script's XLA half runs here (cuDNN checks are skipped without a GPU):
    bf16 vs f32 logits over the real vocabulary, and gradients, give a real, nonzero error."""
    import os
    import re
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "tools/gpu_correctness.py", "--small"], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    errs = [float(e) for e in re.findall(r"bf16 XLA vs f32 logits.*?rel err (\S+)", out.stdout)]
    # bf16 rounding gives ~1e-3..1e-2; the finfo.min of padded vocabulary columns would give
    # exactly 3.9e-3 (the bf16/f32 ratio of finfo.min), so the check must not read those.
    assert len(errs) == 2 and all(1e-4 < e < 2e-2 and abs(e - 3.906e-3) > 1e-6 for e in errs)
    assert out.stdout.count("vs transformers f32 logits") == 2
    assert "fused QKV vs f32 logits" in out.stdout and "ALL PASS" in out.stdout
    # the gradient checks' XLA half, layer_norm_vjp, fold_attention_biases and attention_vjp
    grads = dict(re.findall(r"^bf16 (XLA|xla \+ layer_norm_vjp|xla \+ fold_attention_biases|"
                            r"XLA \+ attention_vjp) vs f32 gradients.*?rel err (\S+)",
                            out.stdout, re.M))
    assert len(grads) == 4 and all(1e-4 < float(e) < 5e-2 for e in grads.values()), out.stdout


def test_bench_train_alternates_dropout_generators():
    """tools/bench_train.py --alternate_dropout_rngs: the config's generator and the others,
    timed in alternating rounds in one process, one line each (the config's at ratio 1)."""
    import os
    import re
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "tools/bench_train.py", "--config=configs/tiny.py", "--steps=2",
         "--warmup=0", "--config.batch_size=4", "--config.data.max_length=32",
         "--alternate_dropout_rngs=hash,rbg"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(r"^dropout_rng=(\w+) +median ([\d.]+) s a step, median ratio to threefry "
                      r"([\d.]+) \((\d+) rounds\)", out.stdout, re.M)
    assert [r[0] for r in rows] == ["threefry", "hash", "rbg"], out.stdout
    assert rows[0][2] == "1.000" and all(float(r[1]) > 0 and r[3] == "2" for r in rows)


def test_gpu_check_rehearses_on_cpu(tmp_path):
    """tools/gpu_check.sh, the one call a GPU session gets, rehearsed here: every default item
    exists, every --config key it sets is a real key, every XLA flag it sets is one this jaxlib
    parses, and a few items run end to end (GPU_CHECK_TINY=1: a tiny model) into the summary."""
    import os
    import re
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = open(os.path.join(repo, "tools", "gpu_check.sh")).read()
    items = set(re.findall(r"^  ([a-z_0-9]+)\)", script, re.M))
    default = re.search(r"items=\$\{\*:-([^}]*)\}", script).group(1).split()
    assert len(items) >= 20 and default and set(default) <= items, set(default) - items
    from configs import base  # the repository is on sys.path (conftest.py)
    config = base.get_config()
    keys = set(re.findall(r"--config\.([a-z_.]+)=", script))
    for key in sorted(keys):
        node = config
        for part in key.split("."):
            assert part in node, f"gpu_check.sh sets --config.{key}: no such config key"
            node = node[part]
    flags = sorted(set(re.findall(r"(--xla_[a-z_0-9]+=\w+)", script)))
    assert len(flags) >= 5
    env = {**os.environ, "XLA_FLAGS": " ".join(flags)}
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.numpy.ones(2).sum())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "2.0" in out.stdout, out.stderr[-2000:]
    run = ["base_lnvjp", "base_cudnn_ln", "base_xla_vjp", "base_acc_fold_hash"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as on a GPU
    env.update(GPU_CHECK_TINY="1", OUT=str(tmp_path),  # the script's python3: this one
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    out = subprocess.run(["bash", "tools/gpu_check.sh", *run], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "unknown item" not in out.stderr, out.stdout + out.stderr
    rows = (tmp_path / "bench.jsonl").read_text().splitlines()
    assert len(rows) == len(run), out.stdout + out.stderr
    summary = out.stdout.split("== summary (seq/s) ==")[1]
    for label in ("base-ln-vjp", "base-cudnn-ln", "base-xla-vjp-drop", "base-acc8-fold-hash"):
        assert re.search(rf"^{label} +robertax +xla +8 +\d", summary, re.M), summary


def _tiny_bench(*extra, env=None):
    """tools/bench_model.py on a 2-layer model; its stdout and the two losses it printed."""
    import os
    import re
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "tools/bench_model.py", "--layers=2", "--hidden=64",
                          "--heads=2", "--batch=2", "--length=32", "--vocab=500", "--reps=1",
                          *extra], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ours, theirs = map(float, re.search(r"loss robertax (\S+)\s+transformers (\S+)",
                                        out.stdout).groups())
    return out.stdout, ours, theirs


@pytest.mark.parametrize("head,dtype,tol,extra", [("full", "float32", 1e-5, []),
                                                  ("masked", "bfloat16", 5e-4, []),
                                                  ("masked", "float32", 1e-5, ["--per_layer"]),
                                                  ("full", "float32", 1e-5,
                                                   ["--cpu_matmul=mkl"])])
def test_bench_model_compares_the_same_computation(head, dtype, tol, extra):
    """tools/bench_model.py runs robertax and PyTorch on the same weights and batch, and their
    losses agree: the two sides compute the same thing (bf16: within rounding). With
    --per_layer, robertax's layers hold unstacked copies of the same weights; with
    --cpu_matmul=mkl its products run through MKL."""
    import re
    stdout, ours, theirs = _tiny_bench(f"--head={head}", f"--dtype={dtype}", *extra)
    assert abs(ours - theirs) < tol * abs(theirs), stdout
    assert re.search(r"median ratio robertax / pytorch: \d+\.\d+", stdout)


def _cpu_env(env_update):
    import os
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(["bash", "tools/cpu_env.sh"], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, **env_update}, timeout=300)


def test_cpu_env_names_a_missing_library():
    out = _cpu_env({"ROBERTAX_JEMALLOC": "/nonexistent/libjemalloc.so.2"})
    assert out.returncode != 0 and out.stdout == ""
    assert "ROBERTAX_JEMALLOC=/nonexistent/libjemalloc.so.2: no such file" in out.stderr


def test_cpu_env_exports_the_library_and_keeps_freed_memory(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    out = _cpu_env({"ROBERTAX_JEMALLOC": str(lib), "LD_PRELOAD": "/other.so"})
    assert out.returncode == 0, out.stderr
    assert f'export LD_PRELOAD="{lib}:/other.so"' in out.stdout.splitlines()
    conf = dict(kv.split(":") for kv in
                out.stdout.split('export MALLOC_CONF="')[1].split('"')[0].split(","))
    assert conf == {"dirty_decay_ms": "-1", "muzzy_decay_ms": "-1", "thp": "always",
                    "metadata_thp": "always"}


def test_bench_model_runs_under_cpu_env():
    """The printed environment really preloads jemalloc into a Python process, and the benchmark
    runs under it (the losses agree, the allocator is in its config line). Skipped only where no
    libjemalloc.so.2 is installed and none can be fetched (no apt-get, or no Debian mirror)."""
    import os
    import re
    import subprocess
    import sys
    out = _cpu_env({"ROBERTAX_JEMALLOC": ""})
    if out.returncode != 0 and ("download libjemalloc2 failed" in out.stderr
                                or "no apt-get/dpkg" in out.stderr):
        pytest.skip(out.stderr.strip())
    assert out.returncode == 0, out.stderr
    env = dict(os.environ)
    for name, value in re.findall(r'^export (\w+)="(.*)"$', out.stdout, re.M):
        env[name] = value
    assert os.path.isfile(env["LD_PRELOAD"].split(":")[0])
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "libjemalloc.so.2" in maps.stdout, maps.stderr
    stdout, ours, theirs = _tiny_bench(env=env)
    assert abs(ours - theirs) < 1e-5 * abs(theirs), stdout
    assert "LD_PRELOAD='" + env["LD_PRELOAD"] in stdout


def test_bench_attention_times_every_path_and_restores_the_kernel_settings(tmp_path):
    """tools/bench_attention.py on the CPU (the kernel in Pallas's interpreter): one row per
    path and setting, the module's block settings back as they were, a bad setting named."""
    import json
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
    import bench_attention
    from robertax import flash_attention as fa
    before = (fa.BLOCK_Q, fa.BLOCK_K, fa.BLOCK_BWD, fa.NUM_WARPS, fa.NUM_STAGES)
    out = tmp_path / "rows.jsonl"
    bench_attention.main(["--batch=1", "--length=64", "--heads=2", "--reps=1",
                          "--pallas_configs=32x32/16/4/2", f"--json_out={out}"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["xla-drop", "pallas", "pallas-drop",
                                         "pallas 32x32/16/4/2", "pallas-drop 32x32/16/4/2"]
    assert all(r["ms"] > 0 and r["length"] == 64 for r in rows)
    assert (fa.BLOCK_Q, fa.BLOCK_K, fa.BLOCK_BWD, fa.NUM_WARPS, fa.NUM_STAGES) == before
    with pytest.raises(SystemExit, match="BLOCK_K 48 is not a power of two"):
        bench_attention.parse_config("64x48/32/4/2")


def _gpu_correctness():
    """tools/gpu_correctness.py as a module (its main() runs only as a script)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                        "gpu_correctness.py")
    spec = importlib.util.spec_from_file_location("gpu_correctness_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_correctness_check_groups():
    """--checks picks groups (gpu_check.sh's correct_cudnn, correct_pallas, ... items); a
    misspelt group or argument is an error naming it and the groups, before any work."""
    gc = _gpu_correctness()
    assert gc.parse_groups([]) == gc.parse_groups(["--small"]) == set(gc.GROUPS)
    assert gc.parse_groups(["--small", "--checks=reference,cudnn"]) == {"reference", "cudnn"}
    with pytest.raises(SystemExit, match=r"unknown group\(s\) \['cudn'\]; the groups are "
                                         r"reference, cudnn, pallas, switches"):
        gc.parse_groups(["--checks=cudn"])
    with pytest.raises(SystemExit, match="unknown argument '--smal'"):
        gc.parse_groups(["--smal"])


def test_gpu_correctness_reports_a_check_that_raises_and_goes_on():
    """A check that raises (robertax's Triton kernels under a JAX that cannot compile them) is
    one FAIL line naming the exception, counted as a failure, and the next check still runs."""
    import io
    from contextlib import redirect_stdout
    gc = _gpu_correctness()
    out = io.StringIO()
    with redirect_stdout(out):
        gc.guarded("pallas kernel compiles", lambda: (_ for _ in ()).throw(
            NotImplementedError("no lowering for tt.foo")))
        gc.guarded("the next check", lambda: gc.check("the next check", 1e-3, 1e-2))
    lines = out.getvalue().splitlines()
    assert gc.failures == ["pallas kernel compiles"]
    assert "raised NotImplementedError: no lowering for tt.foo" in lines[0]
    assert lines[0].endswith("FAIL") and "PASS" in lines[1]
