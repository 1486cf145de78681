"""What a jitted step spends its time on: a table of the ops in a JAX profiler trace.

Reads the Perfetto trace that `jax.profiler.trace(dir, create_perfetto_trace=True)` writes
(`bench_train.py --profile_dir=DIR` makes one) and sums the duration of every op event by name
(numeric suffixes dropped: `fusion.12` and `fusion.40` are one row). On a GPU only the device's
events count (kernels on its streams); on a CPU the XLA ops the runtime's threads ran (runtime
bookkeeping, Python frames and while/call containers, whose ops are counted, are left out). Per step = total / --steps.

    python tools/profile_summary.py DIR [--steps=3] [--top=30]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

# Host-side events: Python frames ($...), runtime bookkeeping (names with spaces, parentheses
# or C++ scopes); XLA op names have none of these.
_RUNTIME = re.compile(r"^(\$|ThreadpoolListener|PjitFunction|ParseArguments|AllocateOutput|"
                      r"PythonRefManager)|[ (]|::")

_CONTAINERS = ("while", "conditional", "call")  # their ops have their own events

# Kernel/op name -> what it does, first match wins (cuDNN's attention kernels also say "gemm").
CATEGORIES = (
    ("attention", r"sdpa|fmha|flash|cudnn"),
    ("matmul", r"gemm|xmma|cutlass|nvjet|cublas|dot|ynn_fusion|matmul"),
    ("rng", r"rng|random|philox|threefry"),
    ("scatter/gather", r"scatter|gather|dynamic.?update|dynamic.?slice"),
    ("copy/transpose", r"copy|transpose|memcpy|memset|concatenate"),
    ("reduction", r"reduce|norm|softmax"),
)


def category(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return cat
    return "elementwise/other"


def find_trace(directory: str) -> str:
    found = sorted(glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f"{directory}: no *.trace.json.gz (trace with "
                                "jax.profiler.trace(dir, create_perfetto_trace=True))")
    return found[-1]


def op_name(name: str) -> str:
    return re.sub(r"(\.\d+)+$", "", name)


def summarize(events: list[dict], steps: int = 1) -> dict:
    """{"device": bool, "rows": [(name, ms_per_step, count_per_step, threads)], "total_ms"}."""
    procs = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in procs.items() if re.search(r"GPU|TPU|/device:", name)}
    time_us, count, threads = collections.Counter(), collections.Counter(), collections.defaultdict(set)
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        if device and e.get("pid") not in device:
            continue
        name = op_name(e["name"])
        if not device and (_RUNTIME.search(name) or name in _CONTAINERS):
            continue
        time_us[name] += float(e["dur"])
        count[name] += 1
        threads[name].add((e.get("pid"), e.get("tid")))
    rows = [(n, t / 1e3 / steps, count[n] / steps, len(threads[n])) for n, t in time_us.most_common()]
    cats = collections.Counter()
    for n, ms, _, _ in rows:
        cats[category(n)] += ms
    return {"device": bool(device), "rows": rows, "total_ms": sum(r[1] for r in rows),
            "categories": dict(cats.most_common())}


def format_table(summary: dict, top: int = 30) -> str:
    where = "device kernels" if summary["device"] else "XLA ops on the CPU runtime's threads"
    lines = [f"profile ({where}), per step: {summary['total_ms']:.1f} ms summed over ops",
             f"  {'op':<60} {'ms':>9} {'share':>7} {'calls':>7} {'threads':>7}"]
    for name, ms, calls, nthreads in summary["rows"][:top]:
        share = ms / summary["total_ms"] if summary["total_ms"] else 0.0
        lines.append(f"  {name[:60]:<60} {ms:9.2f} {100 * share:6.1f}% {calls:7.1f} {nthreads:7d}")
    total = summary["total_ms"] or 1.0
    lines.append("profile by kind: " + ", ".join(
        f"{cat} {ms:.1f} ms ({100 * ms / total:.0f}%)" for cat, ms in summary["categories"].items()))
    return "\n".join(lines)


def table(directory: str, steps: int = 1, top: int = 30) -> str:
    """The table for the newest trace under `directory`."""
    with gzip.open(find_trace(directory)) as f:
        events = json.load(f)["traceEvents"]
    return format_table(summarize(events, steps), top)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory")
    p.add_argument("--steps", type=int, default=1, help="steps the trace holds")
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args(argv)
    print(table(a.directory, a.steps, a.top))


if __name__ == "__main__":
    main()
