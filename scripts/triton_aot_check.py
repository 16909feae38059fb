"""Compile every Triton kernel of fastadv ahead of time for Hopper (sm_90) without a GPU, specialised
exactly as the runtime would for the launches the wrappers make, and check the machine code.

    python scripts/triton_aot_check.py [--quick] [--json FILE]

The wrappers of ``fastadv.ops.triton_kernels`` are called on CPU tensors of the shapes an attack
passes (CIFAR 3×32×32 and ImageNet 3×224×224 rows, odd row sizes, L2 rows of 150k elements, 10 to
1000 classes, every dtype, with and without noise) while each ``kernel[grid](...)`` launch is
recorded instead of run. Each recorded launch is specialised by Triton's own binder (argument types,
16-byte alignment and divisibility, constexprs), compiled with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)``, and checked:

- no FMA contraction in the PTX (``fma.`` instructions: every launch passes enable_fp_fusion=False,
  so each a*b + c rounds twice, like the reference) and no approximate math (``.approx.``);
- ptxas (the one Triton ships, as it uses it) reports no register spills and no stack frame.

A control compilation with fusion on must contain FMAs (so the FMA check can fail). Exit status 1
on any compile error or failed check. ``--quick`` compiles a few launches (the test suite's check).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile real kernels: must precede importing them
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

import fastadv.ops.triton_kernels as tk  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
KERNELS = [name for name, obj in vars(tk).items() if isinstance(obj, JITFunction) and name.endswith("_kernel")]


class _Recorder:
    """Stands in for a kernel: ``rec[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, name: str, launches: list):
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.name, args, kwargs))


def record_launches(quick: bool) -> list:
    """Run the wrappers on CPU tensors with every kernel replaced by a recorder."""
    launches: list = []
    saved = {name: getattr(tk, name) for name in KERNELS}
    for name in KERNELS:
        setattr(tk, name, _Recorder(name, launches))
    try:
        _call_wrappers(quick)
    finally:
        for name, fn in saved.items():
            setattr(tk, name, fn)
    return launches


def _call_wrappers(quick: bool) -> None:
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    rows = [(3, 32, 32)] if quick else [(3, 32, 32), (3, 224, 224), (3, 5, 5), (150_000,)]
    n = 128
    for dt in dtypes:
        ct = torch.float64 if dt == torch.float64 else torch.float32
        e = torch.full((n,), 0.03, dtype=ct)
        for row in rows:
            x = torch.zeros((n,) + row, dtype=dt)
            noises = [None] if quick else [None, torch.zeros(x.shape, dtype=ct)]
            for noise in noises:
                tk.linf_step(x, x, x, e, e, noise, 0.0, 1.0)
                tk.l2_step(x, x, x, e, e, noise, 0.0, 1.0)
                dest, index = torch.arange(n), torch.arange(n)
                errors = torch.zeros(1, dtype=torch.int32)
                tk.linf_step_compact(x, x, x, e, e, noise, dest, index, x, x, x, errors, 0.0, 1.0)
            for always in ((False,) if quick else (False, True)):  # DAT's FOSC step (no noise)
                tk.linf_fosc_step(x, x, x, x, e, e, 0.5, always, 0.0, 1.0)
            if not quick:
                for uniform in (True, False):
                    tk.start_from_noise(x, torch.zeros(x.shape, dtype=ct), e, uniform, 0.0, 1.0)
                tk.compact_rows(x, torch.arange(n), torch.arange(n), x, x, torch.zeros(1, dtype=torch.int32))
        for classes in ([10] if quick else [10, 100, 1000]):
            budget = torch.zeros(n, dtype=torch.int64)
            tk.early_stop_update(torch.zeros(n, classes, dtype=dt), torch.zeros(n, dtype=torch.int64), budget,
                                 budget.clone())
    if not quick:
        tk.compaction_plan(torch.zeros(n, dtype=torch.bool))
        state = torch.zeros(n, 5, dtype=torch.int64)  # the attack's per-row state and its [M, 2] eps/alpha
        tk.compact_rows(state, torch.arange(n), torch.arange(n), state, state, torch.zeros(1, dtype=torch.int32))
        tk.compact_rows(torch.zeros(n, 2), torch.arange(n), None, None, torch.zeros(n, 2),
                        torch.zeros(1, dtype=torch.int32))


def compile_launch(name: str, args: tuple, kwargs: dict, backend, fusion=None):
    """Specialise a recorded launch with Triton's own binder and compile it for TARGET."""
    fn = getattr(tk, name)
    kwargs = dict(kwargs)
    if fusion is not None:
        kwargs["enable_fp_fusion"] = fusion
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    key = repr((name, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs.items()),
                sorted(options.__dict__.items())))
    return key, lambda: triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET,
                                       options=options.__dict__)


def ptxas_report(ptx: str) -> dict:
    """Spills and stack frame of each function, from ptxas -v (Triton's own ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        run = subprocess.run([get_ptxas(TARGET.arch).path, "-v", "--fmad=false", f"--gpu-name={sm_arch_from_capability(TARGET.arch)}",
                              str(src), "-o", str(Path(d) / "k.o")], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"ptxas failed: {run.stderr[-2000:]}")
    frame = [int(v) for v in re.findall(r"(\d+) bytes stack frame", run.stderr)]
    spills = [int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", run.stderr)]
    regs = [int(v) for v in re.findall(r"Used (\d+) registers", run.stderr)]
    return {"stack_frame": max(frame, default=0), "spill_bytes": max(spills, default=0),
            "registers": max(regs, default=0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few launches only")
    ap.add_argument("--json", help="write the per-kernel report here")
    args = ap.parse_args()
    backend = make_backend(TARGET)
    compiled, failures = {}, []
    for name, a, kw in record_launches(args.quick):
        key, build = compile_launch(name, a, kw, backend)
        if key in compiled:
            continue
        label = f"{name}[{', '.join(f'{k}={v}' for k, v in kw.items() if k.isupper())}]"
        try:
            ptx = build().asm["ptx"]
        except Exception as exc:  # a compile error fails the check
            failures.append(f"{label}: compile error: {exc}")
            compiled[key] = {"kernel": label, "error": str(exc)[:500]}
            continue
        info = {"kernel": label, "fma": len(re.findall(r"\bfma\.", ptx)), "approx": len(re.findall(r"\.approx\.", ptx)),
                **ptxas_report(ptx)}
        compiled[key] = info
        for what in ("fma", "approx", "spill_bytes", "stack_frame"):
            if info[what]:
                failures.append(f"{label}: {what} = {info[what]}")
        print(f"ok  {label}: {info['registers']} registers" if not any(info[w] for w in ("fma", "approx", "spill_bytes", "stack_frame"))
              else f"BAD {label}: {info}", flush=True)
    # The control: with fusion on, the L∞ step's a*b + c must become an FMA, or the check is blind.
    name, a, kw = next(launch for launch in record_launches(True) if launch[0] == "_linf_kernel")
    control = len(re.findall(r"\bfma\.", compile_launch(name, a, kw, backend, fusion=True)[1]().asm["ptx"]))
    if control == 0:
        failures.append("control: with enable_fp_fusion=True the L-inf step has no FMA; the FMA check is blind")
    report = {"target": f"sm_{TARGET.arch}", "triton": triton.__version__, "kernels": list(compiled.values()),
              "fma_in_fused_control": control, "failures": failures}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"{len(compiled)} Triton kernel specialisations compiled for sm_{TARGET.arch}; "
          f"{len(failures)} failure(s)" + "".join(f"\n  {f}" for f in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
