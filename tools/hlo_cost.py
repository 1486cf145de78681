"""What a compiled step's kernels move and compute, read from XLA's optimized HLO text.

Each top-level kernel of the entry computation (a fusion, a library call, a copy; the kernels of
a while loop's body counted as often as its known trip count) gets the bytes it reads and
writes and, for matrix products and fused attention (cuDNN's, robertax.flash_attention's), its
FLOPs. A roofline turns those into a time: max(bytes / bandwidth, FLOPs / rate, integer
operations / integer rate) + a launch cost, with rates that are parameters (defaults below:
the bandwidth and product rates measured on an H100 in a profile of the base step, 2026-11-26;
the integer rate the card's specification).
Integer operations are what a random-number hash costs inside an elementwise kernel (threefry's
20 rounds, robertax.hash_rng's mixer); a kernel whose integer work outlasts its memory traffic
is bound by it.

This is an estimate from the program, not a measurement: XLA's autotuner, the real kernels'
efficiency and overlap decide the true time. Its use is to compare two compilations of the same
step (a switch on and off) by what they move, before spending GPU time on them.

Bytes are counted from shapes: an operand read through a slice or gather inside a fusion counts
the slice, an in-place dynamic-update-slice counts the update; broadcast operands count once.
"""

from __future__ import annotations

import dataclasses
import math
import re

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
               "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# Roofline rates (H100 SXM): GEMMs at the 770 TFLOP/s the base step's products reached in the
# 2026-11-26 profile (35.8 TFLOP in 46.7 ms), cuDNN flash attention at 266 TFLOP/s (its 16.3 ms
# there), HBM3 at 3.0 TB/s of the card's 3.35, 3 us per kernel launch.
GEMM_FLOPS = 770e12
ATTENTION_FLOPS = 266e12
BANDWIDTH = 3.0e12
LAUNCH_S = 3e-6
# Integer work (random-number hashing) inside memory-bound kernels: H100 SXM issues 64 32-bit
# integer operations a cycle per SM, 132 SMs at 1.98 GHz. An assumption, not a measurement;
# `tools/gpu_aot.py --int_rate` changes it.
INT_OPS = 16.7e12
INT_TYPES = ("s8", "u8", "s16", "u16", "s32", "u32", "s64", "u64")
# Ops that move or index data rather than compute on it (their cost is in the bytes).
_NOT_ALU = {"broadcast", "reshape", "slice", "dynamic-slice", "transpose", "copy", "concatenate",
            "pad", "gather", "dynamic-update-slice", "reverse", "iota"}
FREE_OPS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
            "opt-barrier", "partition-id", "replica-id", "add-dependency"}

_SHAPE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


@dataclasses.dataclass
class Instr:
    name: str
    type: str  # the result type text, e.g. "bf16[8,512]{1,0}" or "(f32[], s32[4]{0})"
    op: str
    operands: list
    args: str  # the operand list's text (a parameter's number)
    attrs: str  # everything after the operand list

    @property
    def out_bytes(self) -> float:
        return type_bytes(self.type)

    def attr(self, key: str):
        m = re.search(rf"\b{key}=%?([\w.\-]+)", self.attrs)
        return m.group(1) if m else None


@dataclasses.dataclass
class Kernel:
    name: str
    op: str
    category: str  # matmul, attention, or the memory-bound group it belongs to
    op_name: str  # the root op's name in the program (metadata)
    read: float  # bytes
    written: float
    flops: float
    count: int = 1  # executions per step (a while loop's trip count)
    int_ops: float = 0.0  # integer operations (elementwise, counted per element)

    def seconds(self, gemm=GEMM_FLOPS, attention=ATTENTION_FLOPS, bandwidth=BANDWIDTH,
                launch=LAUNCH_S, int_rate=INT_OPS) -> float:
        rate = attention if self.category == "attention" else gemm
        return self.count * (max((self.read + self.written) / bandwidth, self.flops / rate,
                                 self.int_ops / int_rate if int_rate else 0.0) + launch)


def type_bytes(text: str) -> float:
    """Bytes of an HLO type: an array `bf16[2,3]{1,0}` or a tuple of them."""
    return sum(DTYPE_BYTES.get(dt, 0) * math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _SHAPE.findall(text))


def _dims(text: str) -> list:
    m = _SHAPE.search(text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _split_args(s: str):
    """The operand list of `op(...)` and the text after it (s starts after the '(')."""
    depth = 1
    for i, ch in enumerate(s):
        depth += ch in "({[" and 1 or (ch in ")}]" and -1 or 0)
        if depth == 0:
            return s[:i], s[i + 1:]
    return s, ""


def parse(text: str) -> dict:
    """{computation name: [Instr]} and the entry computation's name under key None."""
    comps, current, entry = {}, None, None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and not line.startswith(" "):
                current = comps.setdefault(m.group(1), [])
                if line.startswith("ENTRY"):
                    entry = m.group(1)
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            args, rest = _split_args(m.group(4))
            current.append(Instr(m.group(1), m.group(2), m.group(3),
                                 re.findall(r"%([\w.\-]+)", args), args, rest))
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    comps[None] = entry
    return comps


def _dot_flops(instr: Instr, shapes: dict) -> float:
    """2 * output elements * contracted size, for a dot or a cuBLAS call's dims."""
    lhs = _dims(shapes.get(instr.operands[0], "")) if instr.operands else []
    m = re.search(r"lhs_contracting_dim(?:ension)?s[=\":\[\s]*\{?\[?([0-9,\"\s]*)", instr.attrs)
    contract = [int(d) for d in re.findall(r"\d+", m.group(1))] if m else []
    k = math.prod(lhs[d] for d in contract if d < len(lhs)) if lhs else 0
    out = _dims(instr.type)
    return 2.0 * math.prod(out) * k


def _attention_flops(instr: Instr, shapes: dict) -> float:
    """A cuDNN fused attention call: QK^T and PV forward (4·B·N·L·S·K), 2.5x that backward.
    Q, K are [B, L, N, K] / [B, S, N, K] (the layout jax's cudnn lowering uses)."""
    q, k = (_dims(shapes.get(o, "")) for o in instr.operands[:2])
    if len(q) != 4 or len(k) != 4:
        return 0.0
    b, lq, n, d = q
    forward = 4.0 * b * n * lq * k[1] * d
    return forward * (2.5 if "Backward" in instr.attrs or "backward" in instr.attrs else 1.0)


# robertax.flash_attention's Triton kernels (model.attention="pallas"): the products each one
# runs, in units of 2·B·N·L·S·K, timed at the cuDNN attention rate (an assumption until
# measured), and with dropout the integer operations of each weight's keep bit: one 32-bit hash
# per pair of weights (two rounds of hash_rng.mix, 8 each, and 3 to index and key: 9.5 a
# weight), then 2 to take the weight's half and compare. The PTX of the H100 compile agrees:
# the hash adds 13 instructions a weight to the forward kernel's loop (22 with one hash each).
_FLASH_PRODUCTS = {"fwd": 2, "dkdv": 4, "dq": 3}
_FLASH_HASH_OPS = 12
_FLASH = re.compile(r'name = \\?"flash_attention_(fwd|dkdv|dq)(_dropout)?')
# robertax.fused_norm's Triton kernels (model.fused_norm): memory-bound; with dropout each
# element's keep bit costs one hash (two rounds of hash_rng.mix, 8 each; 2 to index it, 2 to key
# it, 2 to shift and compare: 22), in the forward and again in the backward.
_NORM_HASH_OPS = 22
_NORM = re.compile(r'name = \\?"fused_norm_(fwd|bwd)(_dropout)?')


def _flash_cost(instr: Instr, shapes: dict) -> tuple[float, float]:
    """(FLOPs, integer ops) of a flash_attention kernel: operands (ids, q [B, L, N, K],
    k [B, S, N, K], ...)."""
    m = _FLASH.search(instr.attrs)
    q, k = (_dims(shapes.get(o, "")) for o in instr.operands[1:3])
    if not m or len(q) != 4 or len(k) != 4:
        return 0.0, 0.0
    b, lq, n, d = q
    weights = float(b * n * lq * k[1])
    return (_FLASH_PRODUCTS[m.group(1)] * 2.0 * weights * d,
            weights * _FLASH_HASH_OPS if m.group(2) else 0.0)


def _fusion_io(fused: list, outer_operands: list, shapes: dict) -> tuple:
    """Bytes a fusion reads and writes, looking inside it: parameters used only through
    slices/gathers count what those take, an in-place dynamic-update-slice writes its update."""
    local = {i.name: i for i in fused}
    users = {}
    for i in fused:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    read = 0.0
    params = [i for i in fused if i.op == "parameter"]
    root = fused[-1] if fused else None
    for p in params:
        idx = int(p.args) if p.args.strip().isdigit() else len(outer_operands)
        us = users.get(p.name, [])
        if us and all(u.op in ("slice", "dynamic-slice", "gather") and u.operands[0] == p.name
                      for u in us):
            read += sum(u.out_bytes for u in us)
        elif us and all(u.op == "dynamic-update-slice" and u.operands[0] == p.name for u in us):
            pass  # updated in place: neither read nor rewritten whole
        else:
            read += p.out_bytes if idx >= len(outer_operands) else type_bytes(
                shapes.get(outer_operands[idx], p.type))
    written = 0.0
    roots = [root] if root is not None else []
    if root is not None and root.op == "tuple":
        roots = [local[o] for o in root.operands if o in local]
    for r in roots:
        if r.op == "dynamic-update-slice" and r.operands and local.get(r.operands[0]) and \
                local[r.operands[0]].op == "parameter":
            written += local[r.operands[1]].out_bytes if r.operands[1] in local else 0
        else:
            written += r.out_bytes
    return read, written


def _scratch_bytes(instr: Instr) -> float:
    """A library call's workspace: the trailing 1-D s8/u8 element of a custom call's result
    tuple (cuBLAS asks for 32 MiB, cuDNN for some), scratch memory rather than an output."""
    if instr.op != "custom-call" or not instr.type.startswith("("):
        return 0.0
    last = _SHAPE.findall(instr.type)[-1]
    return type_bytes(f"{last[0]}[{last[1]}]") if last[0] in ("s8", "u8") and \
        "," not in last[1] else 0.0


def _is_int(type_text: str) -> bool:
    m = _SHAPE.search(type_text)
    return bool(m) and m.group(1) in INT_TYPES


def int_ops(instrs: list, shapes: dict) -> float:
    """Elementwise integer operations of a kernel's instructions, one per output element: ops
    with an integer result, and compares and converts of integer operands (an index's iota
    and data movement are left out). XLA:GPU expands RngBitGenerator into such operations
    (Philox), so rbg's kernels are counted like any hash."""
    total = 0.0
    types = {**shapes, **{i.name: i.type for i in instrs}}
    for i in instrs:
        if i.op in FREE_OPS or i.op in _NOT_ALU:
            continue
        if _is_int(i.type) or (i.op in ("compare", "convert") and i.operands
                               and _is_int(types.get(i.operands[0], ""))):
            total += math.prod(_dims(i.type))
    return total


def _category(instr: Instr, fused: list) -> str:
    target = instr.attr("custom_call_target") or ""
    m = re.search(r'custom_call_target="([^"]+)"', instr.attrs)
    target = m.group(1) if m else target
    if "fmha" in target or "cudnn$fmha" in target or (target.endswith("triton")
                                                       and _FLASH.search(instr.attrs)):
        return "attention"
    if "gemm" in target or "matmul" in target or any(i.op in ("dot", "convolution")
                                                     for i in fused):
        return "matmul"
    if target.endswith("triton") and _NORM.search(instr.attrs):
        return "layer norm"
    m = re.search(r'op_name="([^"]*)"', instr.attrs)
    name = m.group(1) if m else ""
    for cat, keys in (("dropout masks", ("rng_bit_generator", "bernoulli", "threefry", "dropout",
                                         "random")),
                      ("layer norm", ("norm",)), ("gelu", ("gelu", "erf")),
                      ("embedding and head", ("embed", "mlm_head", "take", "log_softmax")),
                      ("layer elementwise", ("layers",))):
        if any(k in name for k in keys):
            return cat
    if instr.op == "copy" or (fused and fused[-1].op in ("copy", "transpose")):
        return "copies and transposes"
    return "optimizer and other"


def kernels(text: str) -> list:
    """The step's kernels in execution order (a while body's kernels once, with its count)."""
    comps = parse(text)
    out = []

    def walk(comp_name: str, count: int):
        instrs = comps[comp_name]
        shapes = {i.name: i.type for i in instrs}
        for i in instrs:
            if i.op in FREE_OPS:
                continue
            if i.op == "while":
                body = i.attr("body")
                m = re.search(r'"known_trip_count":\{"n":"(\d+)"', i.attrs)
                walk(body, count * (int(m.group(1)) if m else 1))
                continue
            if i.op in ("call", "conditional", "async-start", "async-done"):
                called = i.attr("to_apply") or i.attr("calls")
                if called in comps and i.op == "call":
                    walk(called, count)
                continue
            fused = comps.get(i.attr("calls"), []) if i.op == "fusion" else []
            if fused:
                read, written = _fusion_io(fused, i.operands, shapes)
            else:
                read = sum(type_bytes(shapes.get(o, "")) for o in i.operands)
                written = i.out_bytes - _scratch_bytes(i)
            cat = _category(i, fused)
            flops, ints = 0.0, 0.0
            if cat == "attention" and _FLASH.search(i.attrs):
                flops, ints = _flash_cost(i, shapes)
            elif cat == "attention":
                flops = _attention_flops(i, shapes)
            elif cat == "matmul":
                dots = [f for f in fused if f.op == "dot"]
                fshapes = {f.name: f.type for f in fused}
                flops = sum(_dot_flops(d, fshapes) for d in dots) if dots else \
                    _dot_flops(i, shapes)
            m = re.search(r'op_name="([^"]*)"', i.attrs)
            norm = _NORM.search(i.attrs) if not fused else None
            if norm:  # x [B, L, D] is the second operand of both kernels
                ints = math.prod(_dims(shapes.get(i.operands[1], ""))) * _NORM_HASH_OPS \
                    if norm.group(2) else 0.0
            elif cat not in ("matmul", "attention"):
                ints = int_ops(fused or [i], shapes)
            out.append(Kernel(i.name, i.op, cat, m.group(1) if m else "", read, written,
                              flops, count, ints))

    walk(comps[None], 1)
    return out


def summary(ks: list, **rates) -> dict:
    """{category: (kernels, GB moved, TFLOP, estimated ms)} plus a 'total' row."""
    rows = {}
    for k in ks:
        n, gb, tf, ms = rows.get(k.category, (0, 0.0, 0.0, 0.0))
        rows[k.category] = (n + k.count, gb + k.count * (k.read + k.written) / 1e9,
                            tf + k.count * k.flops / 1e12, ms + 1e3 * k.seconds(**rates))
    total = tuple(sum(r[j] for r in rows.values()) for j in range(4))
    return {**dict(sorted(rows.items(), key=lambda kv: -kv[1][3])), "total": total}
