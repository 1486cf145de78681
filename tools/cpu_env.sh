#!/usr/bin/env bash
# The allocator setting for a JAX (or PyTorch) job on a CPU: prints the exports that preload
# jemalloc, keep the memory a step frees for the next step and back it with transparent huge pages.
#
#   eval "$(bash tools/cpu_env.sh)"
#   python tools/bench_model.py        # or python -m robertax.train ..., any CPU job
#
# Why: XLA:CPU allocates each execution's temporaries as one block (1.6 GB for a roberta-base
# forward+backward at batch 8 x 128) and its outputs afresh. glibc serves blocks that large with
# mmap and returns them with munmap, so a jitted forward+backward that returns new gradients
# every call faults in and zeroes fresh pages each time: 0.6-1.5 s of kernel time a call on a
# 2-core machine (README, Performance; tools/cpu_performance.md). jemalloc with purging off
# reuses the memory. The cost: the process keeps its peak memory until it exits. robertax's
# train step measured already fault-free with GLIBC_TUNABLES=glibc.malloc.hugetlb=1.
#
# libjemalloc.so.2 is taken from $ROBERTAX_JEMALLOC, else the system's library directories
# (Debian/Ubuntu: apt-get install libjemalloc2), else Debian's libjemalloc2 package is fetched
# without root (apt-get download; dpkg -x) into robertax.cache_root()/jemalloc.
set -euo pipefail

find_jemalloc() {
  if [ -n "${ROBERTAX_JEMALLOC:-}" ]; then
    if [ ! -f "$ROBERTAX_JEMALLOC" ]; then
      echo "cpu_env.sh: ROBERTAX_JEMALLOC=$ROBERTAX_JEMALLOC: no such file" >&2
      return 1
    fi
    echo "$ROBERTAX_JEMALLOC"
    return 0
  fi
  local d lib
  for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib \
           /usr/local/lib "${CONDA_PREFIX:-/nonexistent}/lib"; do
    if [ -f "$d/libjemalloc.so.2" ]; then
      echo "$d/libjemalloc.so.2"
      return 0
    fi
  done
  # robertax.cache_root(): $ROBERTAX_CACHE, default ~/.cache/robertax (robertax/__init__.py
  # imports nothing, so any python3 can ask it).
  local cache
  cache="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." &&
           python3 -c 'import robertax; print(robertax.cache_root())')/jemalloc"
  lib="$(find "$cache" -name libjemalloc.so.2 2>/dev/null | head -n 1)"
  if [ -n "$lib" ]; then
    echo "$lib"
    return 0
  fi
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    echo "cpu_env.sh: libjemalloc.so.2 not found and no apt-get/dpkg to fetch it; install" \
         "jemalloc (conda install jemalloc, or your distribution's package) and set" \
         "ROBERTAX_JEMALLOC to its libjemalloc.so.2" >&2
    return 1
  fi
  local tmp
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download libjemalloc2 >&2); then
    echo "cpu_env.sh: apt-get download libjemalloc2 failed (see above)" >&2
    rm -rf "$tmp"
    return 1
  fi
  mkdir -p "$cache"
  dpkg -x "$tmp"/libjemalloc2_*.deb "$cache"
  rm -rf "$tmp"
  lib="$(find "$cache" -name libjemalloc.so.2 | head -n 1)"
  if [ -z "$lib" ]; then
    echo "cpu_env.sh: the libjemalloc2 package in $cache holds no libjemalloc.so.2" >&2
    return 1
  fi
  echo "$lib"
}

lib="$(find_jemalloc)"
echo "export LD_PRELOAD=\"$lib${LD_PRELOAD:+:$LD_PRELOAD}\""
echo "export MALLOC_CONF=\"dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always,metadata_thp:always\""
