"""Ahead-of-time compile report: registers, spills and shared memory of every
kernel variant the dispatchers can choose, for sm_80 and sm_90, with no GPU.

    python tools/compile_report.py [--arch 80 90] [--H 64 128 ...]
        [--dtype fp32 fp16 bf16] [--quick] [--markdown] [--jobs N]

Triton rows: for each (arch, H, dtype) the Triton dispatcher's choice
(triton_plan.kernel_config with the arch's shared memory) is compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` for the
forward and the backward kernel, over every flag combination the launchers
can pass (N in {1, 2}, with/without lengths, with/without workspace, for
fp32 TF32 on/off, and for SPLIT both launch modes: the spinning grid barrier
and one launch per step). The kernels are the compiled kind
(``triton_lstm.kernels(interpret=False)``) whatever TRITON_INTERPRET says. One row per kernel/arch/H/dtype shows the worst case over
those flag variants: registers from Triton's bundled ``cuobjdump
--dump-resource-usage`` on the cubin, spill bytes from its bundled
``ptxas -v`` on the PTX, shared memory from the kernel metadata.
``--quick`` (CI): H in {64, 128, 512}, fp32 and bf16, both arches, only
the flag set used in training (N=2, lengths, workspace), both fp32 dot
precisions, SPLIT's grid barrier. ``--training``: that flag set for every
H and dtype asked, with both SPLIT launch modes (the table in
docs/triton.md; the full flag matrix is ~750 compiles).

CUDA C++ rows come from ``cuda_resources.rows(archs, hs, dtypes)`` (tools/cuda_resources.py),
and are checked the same way. A developer tool: it needs the source tree, so it
lives in tools/ and is not installed with the package.

Exit status 1 if any row spills or exceeds the arch's shared memory per block
(opt-in: sm_80 163 KB, sm_90 227 KB), 0 otherwise.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, astuple, dataclass

# The FP fusion default is pinned to Triton 3.9's current default (silences a warning).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

ARCHS = (80, 90)
HS = (64, 128, 256, 512, 1024)
DTYPES = ("fp32", "fp16", "bf16")
QUICK_HS = (64, 128, 512)
QUICK_DTYPES = ("fp32", "bf16")
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}   # bytes per block, opt-in


@dataclass(frozen=True)
class Variant:
    kernel: str      # "fwd" or "bwd"
    arch: int
    H: int
    dtype: str       # fp32 / fp16 / bf16
    N: int
    has_lengths: bool
    keep_for_backward: bool    # forward only
    dot_prec: str
    sync: bool = True          # SPLIT only: the spinning grid barrier (else one launch per step)
    plan: str = ""             # a forced config (triton_plan.parse_plan text); "" = the dispatcher's


def _config(v: "Variant"):
    import torch
    from bilstm_fast.ops import triton_plan as tp
    if v.plan:
        return tp.parse_plan(v.plan)
    tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[v.dtype]
    return tp.kernel_config(v.H, tdtype, tp.SMEM_BYTES[v.arch], v.dot_prec)


def triton_variants(archs, hs, dtypes, quick: bool, training: bool = False) -> list[Variant]:
    """quick: the training flags (N=2, lengths, workspace), both fp32 dot
    precisions, SPLIT's grid barrier only; training: the same flags with both
    SPLIT launch modes; else every flag combination the launchers can pass."""
    out = []
    precs = {"fp32": ("tf32", "tf32x3")}
    for arch, H, dtype in itertools.product(archs, hs, dtypes):
        for kernel in ("fwd", "bwd"):
            if quick or training:
                flags = [(2, True, True, p) for p in precs.get(dtype, ("tf32",))]
            else:
                flags = itertools.product((1, 2), (False, True),
                                          (False, True) if kernel == "fwd" else (True,),
                                          ("tf32", "tf32x3") if dtype == "fp32" else ("tf32",))
            for f in flags:
                v = Variant(kernel, arch, H, dtype, *f)
                split = _config(v).path == "split"
                out += [Variant(kernel, arch, H, dtype, *f, sync=sync)
                        for sync in ((True,) if quick or not split else (True, False))]
    return out


def _bin(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_triton(v: Variant):
    """Compile one variant ahead of time for its arch -> (Triton's compiled
    kernel: .asm["cubin"], .asm["ptx"], .metadata; the KernelConfig used).
    Also used by tools/cost_model.py."""
    import triton
    from triton.backends.compiler import GPUTarget
    from bilstm_fast.ops import triton_lstm
    from bilstm_fast.ops import triton_plan as tp

    tk = triton_lstm.kernels(interpret=False)
    cfg = _config(v)
    split = cfg.path == "split"
    X = v.dtype
    if v.kernel == "fwd":
        fn = tk._lstm_fwd_split_kernel if split else tk._lstm_fwd_kernel
        ptrs = dict(gx=X, w_hh=X, h0=X, c0=X, lengths="i64", y=X, h_n=X, c_n=X,
                    gates="fp32", cells="fp32", c_scr="fp32")
        flags = dict(HAS_LENGTHS=v.has_lengths, KEEP_FOR_BACKWARD=v.keep_for_backward, DOT_PREC=v.dot_prec)
    else:
        fn = tk._lstm_bwd_split_kernel if split else tk._lstm_bwd_kernel
        ptrs = dict(dy=X, dh_n=X, dc_n=X, w_hh=X, c0=X, lengths="i64", gates="fp32", cells="fp32",
                    dgx=X, dh0=X, dc0=X, dh_scr="fp32", dc_scr="fp32")
        flags = dict(HAS_LENGTHS=v.has_lengths, DOT_PREC=v.dot_prec)
    if split:
        ptrs["bar"] = "i32"
        path_flags = dict(BLOCK_K=tp.split_block_k(v.H), SYNC=v.sync)
        scalars = dict(T="i32", B="i32", S_BEGIN="i32", S_END="i32")
    else:
        path_flags = dict(RESIDENT=cfg.resident)
        scalars = dict(T="i32", B="i32", **({"H_LOOP": "i32"} if v.kernel == "fwd" else {}))
    constexprs = dict(H=v.H, N=v.N, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h,
                      **path_flags, **flags, F32_DOT=False)  # F32_DOT: interpreter only
    # T, B (and the step range) stay plain i32 (the launcher marks them
    # do_not_specialize); pointers carry the 16-byte alignment the JIT sees
    # for torch allocations.
    signature = {k: "*" + t for k, t in ptrs.items()}
    signature.update(**scalars, **{k: "constexpr" for k in constexprs})
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(ptrs))}
    options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, **tp.maxnreg_kwargs(cfg))
    if split and v.sync:
        options["launch_cooperative_grid"] = True
    k = triton.compile(triton.compiler.ASTSource(fn, signature, constexprs, attrs),
                       target=GPUTarget("cuda", v.arch, 32), options=options)
    return k, cfg


def compile_triton_variant(v: Variant) -> dict:
    """Compile one variant for its arch; -> resource dict (worker process)."""
    k, cfg = compile_triton(v)
    split = cfg.path == "split"
    regs, stack = _cubin_usage(k.asm["cubin"])
    spill_st, spill_ld = _ptxas_spills(k.asm["ptx"], v.arch)
    return dict(backend="triton", kernel=k.metadata.name, arch=v.arch, H=v.H, dtype=v.dtype,
                registers=regs, spills=spill_st + spill_ld, stack=stack,
                smem_bytes=k.metadata.shared, threads=32 * k.metadata.num_warps,
                note=f"{cfg.path} BH={cfg.block_h}"
                     + (f" S={-(-v.H // cfg.block_h)}/dir" if split else "")
                     + (f" maxnreg={cfg.maxnreg}" if cfg.maxnreg else ""))


def _cubin_usage(cubin: bytes) -> tuple[int, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return int(m.group(1)), int(m.group(2))


def _ptxas_spills(ptx: str, arch: int) -> tuple[int, int]:
    """Spill store/load bytes: re-run the ptxas Triton itself used for this
    arch (sm_90 uses its bundled newer ptxas) with Triton's flags and -v."""
    from triton.backends.nvidia.compiler import get_ptxas
    target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                            f"--gpu-name={target}", src, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stdout + r.stderr)
    return int(m.group(1)), int(m.group(2))


def worst_per_kernel(rows: list[dict]) -> list[dict]:
    """Collapse flag variants: one row per backend/kernel/arch/H/dtype, the max."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r["backend"], r["kernel"], r["arch"], r["H"], r["dtype"])
        g = groups.get(key)
        if g is None:
            groups[key] = dict(r, variants=1, error=r.get("error", ""))
            continue
        for col in ("registers", "spills", "stack", "smem_bytes", "threads"):
            g[col] = max(g[col], r[col])
        g["note"] = g["note"] or r["note"]
        g["error"] = "; ".join(filter(None, (g["error"], r.get("error", ""))))
        g["variants"] += 1
    return list(groups.values())


def cuda_rows(archs, hs, dtypes) -> list[dict]:
    import cuda_resources   # tools/cuda_resources.py, beside this file (on sys.path as the script's dir)
    rows = cuda_resources.rows(list(archs), list(hs), list(dtypes))
    for r in rows:
        r.setdefault("note", "")
        r.setdefault("stack", 0)
        r.setdefault("variants", 1)
    return rows


def problems(r: dict) -> list[str]:
    out = [r["error"]] if r.get("error") else []
    if r["spills"] > 0:
        out.append(f"spills {r['spills']} B")
    limit = SMEM_LIMIT.get(r["arch"])
    if limit is not None and r["smem_bytes"] > limit:
        out.append(f"smem {r['smem_bytes']} > {limit}")
    return out


COLUMNS = ("backend", "kernel", "arch", "H", "dtype", "registers", "spills", "smem_bytes",
           "warps", "threads", "variants", "note", "status")


def _cells(r: dict) -> list[str]:
    bad = problems(r)
    vals = dict(r, arch=f"sm_{r['arch']}", warps=r["threads"] // 32,
                status="FAIL: " + ", ".join(bad) if bad else "ok")
    return [str(vals.get(c, "")) for c in COLUMNS]


def print_table(rows: list[dict], markdown: bool) -> None:
    cells = [_cells(r) for r in rows]
    if markdown:
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "|".join("---" for _ in COLUMNS) + "|")
        for c in cells:
            print("| " + " | ".join(c) + " |")
        return
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(COLUMNS)]
    print("  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths)))


def compile_all(variants: list[Variant], jobs: int) -> list[dict]:
    """Compile in `jobs` worker processes (python tools/compile_report.py
    --worker, one JSON line per variant). The compiler can abort the process
    (an LLVM assertion); that variant becomes a failing row and a new worker
    takes the rest of the list."""
    chunks = [variants[i::jobs] for i in range(max(1, jobs))]
    results: list[dict] = []

    def run_chain(todo: list[Variant]) -> None:
        while todo:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"],
                                  input=json.dumps([asdict(v) for v in todo]),
                                  capture_output=True, text=True)
            done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            results.extend(done)
            todo = todo[len(done):]
            if todo and proc.returncode != 0:    # the first unfinished variant crashed the compiler
                why = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
                results.append(_crash_row(todo[0], f"exit {proc.returncode}: {why}"))
                todo = todo[1:]

    threads = [threading.Thread(target=run_chain, args=(c,)) for c in chunks if c]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    order = {astuple(v): i for i, v in enumerate(variants)}
    return sorted(results, key=lambda r: order[tuple(r["variant"])])


def _crash_row(v: Variant, why: str) -> dict:
    return dict(backend="triton", kernel=f"_lstm_{v.kernel}_kernel", arch=v.arch, H=v.H, dtype=v.dtype,
                registers=-1, spills=0, stack=0, smem_bytes=0, threads=0, variant=list(astuple(v)),
                note="", error=f"compiler crashed on N={v.N} lengths={v.has_lengths} "
                               f"ws={v.keep_for_backward} {v.dot_prec} sync={v.sync}: {why}")


def _worker() -> int:
    for d in json.loads(sys.stdin.read()):
        v = Variant(**d)
        print(json.dumps(dict(compile_triton_variant(v), variant=list(astuple(v)))), flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/compile_report.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", choices=ARCHS, help="compute capabilities (default: 80 90)")
    ap.add_argument("--H", type=int, nargs="+", help=f"hidden sizes (default: {HS})")
    ap.add_argument("--dtype", nargs="+", choices=DTYPES, help=f"dtypes (default: {DTYPES})")
    ap.add_argument("--quick", action="store_true",
                    help=f"CI subset: H {QUICK_HS}, {QUICK_DTYPES}, training flags only")
    ap.add_argument("--training", action="store_true",
                    help="training flags only (both fp32 precisions, both SPLIT launch modes)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker()
    archs = tuple(args.arch or ARCHS)
    hs = tuple(args.H or (QUICK_HS if args.quick else HS))
    dtypes = tuple(args.dtype or (QUICK_DTYPES if args.quick else DTYPES))

    variants = triton_variants(archs, hs, dtypes, args.quick, args.training)
    print(f"compiling {len(variants)} Triton kernel variants for "
          f"{', '.join(f'sm_{a}' for a in archs)} ...", file=sys.stderr, flush=True)
    raw = compile_all(variants, args.jobs)
    rows = worst_per_kernel(raw) + cuda_rows(archs, hs, dtypes)
    print_table(rows, args.markdown)
    failed = [r for r in rows if problems(r)]
    print(f"\n{len(rows)} rows ({len(raw)} Triton variants compiled), {len(failed)} failing "
          f"(spills, or shared memory above sm_80 {SMEM_LIMIT[80]} / sm_90 {SMEM_LIMIT[90]} bytes)",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
