"""The GPU benchmarks of ``scripts/gpu_check.sh`` (issue #11 §6), one stage per call:

    python -m benchmarks.gpu_check STAGE --out DIR [--images N]

- ``kernels`` (a): the fused L∞ step and ``linf_step_compact`` at 4096×3×32×32, fp32 and bf16:
  GB/s against the measured device-to-device copy, and the speed-up over the eager composite.
- ``attack`` (b): early-stopped PGD-10-τ (τ = 0, 1, 3) against PGD-10 on PreActResNet-18, batch 128
  and 512, bf16 + channels_last: the time ratio against the executed-BP ratio, and the share of the
  attack's time spent outside the model's forward and backward passes.
- ``epoch`` (c): AT (PGD-10) and FAT τ = 1 with fastadv's Trainer, and a plain PyTorch PGD-10
  training loop, PreActResNet-18, bf16 + channels_last, batch 128 and 512: images/s, and seconds
  per 50,000 images (measured over ``--images`` random CIFAR-sized images, default 50,000).
- ``backends`` (d): native against Triton for every op at batch 128 and 4096 (3×32×32, fp32),
  per-call time including the launch: which default order the measurement supports.

Each stage writes ``DIR/<stage>.json`` (raw numbers) and ``DIR/<stage>.md`` (a table) as soon as it
ends. Timing: CUDA events around each of ``--iters`` calls after warm-up; medians. The model of (b)
and (c) is warm-started on a synthetic task it can partly learn (the label is the argmax of 10 fixed
random projections of the image), so that early stopping sees a mix of correct and wrong samples
as it would in real training; the data are random (no dataset on the GPU machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import fastadv.ops as ops
from fastadv import models
from fastadv.attacks import PGD, EarlyStopPGD
from fastadv.training import Trainer

DEV = "cuda"
EPS, ALPHA = 8 / 255, 2 / 255
# --smoke (any device, e.g. the CPU): tiny sizes, to check the script itself before a GPU session.
SIZES = dict(kernel_n=4096, batches=(128, 512), backend_ns=(128, 4096), warm_steps=300, warm_batch=256,
             arch_models=("preact_resnet18", "cifs_resnet18", "dsnet-6-16", "dsnet"), arch_batch=128)
SMOKE = dict(kernel_n=64, batches=(8,), backend_ns=(8,), warm_steps=2, warm_batch=8,
             arch_models=("preact_resnet18", "cifs_resnet18", "dsnet-3-4"), arch_batch=8)


# ----------------------------------------------------------------------------- timing helpers
def cuda_times(fn: Callable[[], object], iters: int = 30, warmup: int = 5) -> list[float]:
    """Seconds of each of ``iters`` calls (CUDA events), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if DEV != "cuda":  # --smoke on the CPU
        return [_wall(fn) for _ in range(iters)]
    sync()
    out = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return out


def _wall(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def autocast():
    return torch.autocast(DEV, dtype=torch.bfloat16)


def median(v):
    return statistics.median(v)


def write(out: Path, stage: str, rows: list[dict], columns: list[str], note: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(0) if DEV == "cuda" else DEV, "torch": torch.__version__, "cuda": torch.version.cuda,
            "backends": ops.available_backends(DEV)}
    (out / f"{stage}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"### {stage}", "", note, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    (out / f"{stage}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------- (a) kernels
def _eager_step(x, grad, x_nat, eps, alpha):
    y = x + alpha * grad.sign()
    y = torch.min(torch.max(y, x_nat - eps), x_nat + eps)
    x.copy_(y.clamp_(0.0, 1.0))


def stage_kernels(out: Path, iters: int) -> None:
    rows = []
    n = SIZES["kernel_n"]
    for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x_nat = torch.rand(n, 3, 32, 32, device=DEV).to(dtype)
        grad = torch.randn_like(x_nat)
        x = x_nat.clone()
        row_bytes = x[0].numel() * x.element_size()
        e = torch.full((n,), EPS, device=DEV)
        a = torch.full((n,), ALPHA, device=DEV)
        ev, av = (t.to(dtype).view(-1, 1, 1, 1) for t in (e, a))
        dst = torch.empty_like(x)
        copy_t = median(cuda_times(lambda: dst.copy_(grad), iters))
        copy_bw = 2 * n * row_bytes / copy_t
        eager_t = median(cuda_times(lambda: _eager_step(x, grad, x_nat, ev, av), iters))
        leave = torch.rand(n, device=DEV) < 0.3
        dest, m = ops.compaction_plan(leave)
        index, leavers = torch.arange(n, device=DEV), torch.empty_like(x)
        for backend in [b for b in ops.available_backends(DEV) if b != "reference"]:
            os.environ["FASTADV_BACKEND"] = backend
            step_t = median(cuda_times(lambda: ops.linf_step_(x, grad, x_nat, e, a, check=False), iters))
            comp_t = median(cuda_times(lambda: ops.linf_step_compact(x, grad, x_nat, e, a, dest, m, index, leavers,
                                                                     check=False), iters))
            step_bw = 4 * n * row_bytes / step_t  # read x, grad, x_nat; write x
            comp_bw = (2 * n + 3 * m) * row_bytes / comp_t  # reads: x + 2 per stayer; writes: 2 per stayer + leavers
            rows += [dict(op="linf_step_", dtype=dname, backend=backend, us=step_t * 1e6, gb_s=step_bw / 1e9,
                          pct_of_copy=100 * step_bw / copy_bw, speedup_vs_eager=eager_t / step_t),
                     dict(op="linf_step_compact (30% leave)", dtype=dname, backend=backend, us=comp_t * 1e6,
                          gb_s=comp_bw / 1e9, pct_of_copy=100 * comp_bw / copy_bw, speedup_vs_eager=None)]
        os.environ.pop("FASTADV_BACKEND", None)
        rows += [dict(op="eager composite", dtype=dname, backend="torch", us=eager_t * 1e6,
                      gb_s=4 * n * row_bytes / eager_t / 1e9, pct_of_copy=100 * 4 * n * row_bytes / eager_t / copy_bw),
                 dict(op="copy_ (reference)", dtype=dname, backend="torch", us=copy_t * 1e6, gb_s=copy_bw / 1e9,
                      pct_of_copy=100.0)]
    write(out, "kernels", rows, ["op", "dtype", "backend", "us", "gb_s", "pct_of_copy", "speedup_vs_eager"],
          "4096×3×32×32; target: the fused step at >= 85 % of the copy bandwidth.")


# ----------------------------------------------------------------------------- models and data
def synthetic_task(n: int, seed: int = 0):
    """Random images and the labels of a rule a CNN can partly learn: argmax of 10 projections."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, device=DEV, generator=g)
    w = torch.randn(10, 3 * 32 * 32, device=DEV, generator=torch.Generator(device=DEV).manual_seed(123))
    y = ((x.flatten(1) - 0.5) @ w.t()).argmax(1)
    return x.contiguous(memory_format=torch.channels_last), y


_WARM: dict = {}


def warm_model():
    """PreActResNet-18 after 300 natural SGD steps on the synthetic task (bf16, batch 256)."""
    steps, wb = SIZES["warm_steps"], SIZES["warm_batch"]
    if "state" not in _WARM:
        torch.manual_seed(0)
        model = models.create("preact_resnet18", num_classes=10).to(DEV).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x, y = synthetic_task(wb * 50, seed=1)
        for i in range(steps):
            j = (i % 50) * wb
            with autocast():
                loss = F.cross_entropy(model(x[j:j + wb]), y[j:j + wb])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _WARM["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    model = models.create("preact_resnet18", num_classes=10).to(DEV).to(memory_format=torch.channels_last)
    model.load_state_dict(_WARM["state"])
    return model


# ----------------------------------------------------------------------------- (b) attack
def stage_attack(out: Path, iters: int) -> None:
    model = warm_model().eval()
    rows = []
    for batch in SIZES["batches"]:
        x, y = synthetic_task(batch, seed=2)
        with torch.no_grad(), autocast():
            clean_acc = (model(x).argmax(1) == y).float().mean().item()
        attacks = {"PGD-10": PGD(model, eps=EPS, alpha=ALPHA, steps=10)}
        attacks.update({f"PGD-10-τ{t}": EarlyStopPGD(model, eps=EPS, alpha=ALPHA, steps=10, tau=t)
                        for t in (0, 1, 3)})
        results, times, rows_per_check = {}, {}, {}
        for name, atk in attacks.items():
            def run(_atk=atk):
                with autocast():
                    return _atk.run(x, y)
            seen: list[int] = []
            check = atk._check
            atk._check = lambda xc, yc, clean, _check=check: seen.append(xc.shape[0]) or _check(xc, yc, clean)
            results[name] = run()  # one untimed run records the rows of each check (no sync)
            atk._check = check
            rows_per_check[name] = seen
            times[name] = cuda_times(run, iters, warmup=2)
        fb = {}  # the model's forward + backward at each row count seen

        def fwd_bwd(m):
            xm = x[:m].clone().requires_grad_(True)
            with autocast():
                loss = F.cross_entropy(model(xm), y[:m])
            torch.autograd.grad(loss, xm)
        base_t = median(times["PGD-10"])
        base_exec = results["PGD-10"].bp_executed
        for name, res in results.items():
            t = median(times[name])
            model_t = 0.0
            for m in rows_per_check[name]:
                if m not in fb:
                    fb[m] = median(cuda_times(lambda: fwd_bwd(m), max(5, iters // 3), warmup=2))
                model_t += fb[m]
            rows.append(dict(batch=batch, attack=name, clean_acc=clean_acc, ms=t * 1e3,
                             bp=res.bp / batch, bp_executed=res.bp_executed / batch,
                             time_ratio=t / base_t, bp_exec_ratio=res.bp_executed / base_exec,
                             time_over_bp=(t / base_t) / (res.bp_executed / base_exec),
                             outside_model_pct=100 * max(0.0, t - model_t) / t,
                             checks=len(rows_per_check[name])))
    write(out, "attack", rows, ["batch", "attack", "clean_acc", "ms", "bp", "bp_executed", "time_ratio",
                                "bp_exec_ratio", "time_over_bp", "outside_model_pct"],
          "PreActResNet-18, bf16 autocast, channels_last, ε = 8/255, α = 2/255, random start. "
          "Target: time_over_bp <= 1.10 at batch 512. outside_model_pct: the attack's time not spent in "
          "the model's forward + backward at the checks' row counts (steps, compaction, host reads, launches).")


# ----------------------------------------------------------------------------- (c) epoch
def _plain_pgd_step(model, opt, x, y):
    """What a user writes without fastadv: PGD-10 (eager ops) then one training step."""
    model.eval()
    delta = (torch.rand_like(x) * 2 - 1) * EPS
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(10):
        x_adv.requires_grad_(True)
        with autocast():
            loss = F.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + ALPHA * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    model.train()
    with autocast():
        loss = F.cross_entropy(model(x_adv), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def stage_epoch(out: Path, images: int) -> None:
    rows = []
    x_all, y_all = synthetic_task(images, seed=3)
    for batch in SIZES["batches"]:
        nb = images // batch
        for name, method, tau in (("plain PyTorch PGD-10", None, None), ("fastadv AT (PGD-10)", "at", None),
                                  ("fastadv FAT τ=1", "fat", 1)):
            model = warm_model()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            if method is None:
                step = lambda xb, yb: _plain_pgd_step(model, opt, xb, yb)
                bp_of = None
            else:
                tr = Trainer(model, opt, method, eps=EPS, alpha=ALPHA, steps=10, tau=tau,
                             amp="bf16" if DEV == "cuda" else None,
                             channels_last=True, device=DEV)
                step = tr.train_step
                bp_of = tr
            for i in range(2):  # warm-up: cuDNN algorithm choice, allocator
                step(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
            sync()
            bp_sum = 0
            t0 = time.perf_counter()
            for i in range(nb):
                res = step(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
                if bp_of is not None and isinstance(res, dict) and "bp" in res:
                    bp_sum += res["bp"]
            sync()
            dt = time.perf_counter() - t0
            ips = nb * batch / dt
            rows.append(dict(batch=batch, loop=name, images=nb * batch, seconds=dt, images_per_s=ips,
                             s_per_50k=50_000 / ips, bp=(bp_sum / (nb * batch)) if bp_sum else None))
            del model, opt
    base = {r["batch"]: r for r in rows if r["loop"].startswith("plain")}
    at = {r["batch"]: r for r in rows if r["loop"].startswith("fastadv AT")}
    for r in rows:
        r["speedup_vs_plain"] = r["images_per_s"] / base[r["batch"]]["images_per_s"]
        r["time_vs_at"] = r["seconds"] / at[r["batch"]]["seconds"]
    write(out, "epoch", rows, ["batch", "loop", "images", "images_per_s", "s_per_50k", "bp", "speedup_vs_plain",
                               "time_vs_at"],
          f"PreActResNet-18, bf16 autocast, channels_last, over {images} random CIFAR-sized images (s_per_50k "
          "extrapolates). Targets: PGD-10 AT >= 2x the plain loop and <= 20 s per 50k; FAT τ=1 <= half of AT.")


# ----------------------------------------------------------------------------- (e) architectures
def stage_architectures(out: Path, images: int) -> None:
    """Issue #14: PGD-10 AT epochs of CIFS-ResNet-18 and DS-Net (a small one and the official
    size) beside PreActResNet-18, images/s, on the synthetic CIFAR-sized task."""
    rows = []
    x_all, y_all = synthetic_task(images, seed=3)
    batch = SIZES["arch_batch"]
    for name in SIZES["arch_models"]:
        torch.manual_seed(0)
        model = models.create(name, num_classes=10).to(DEV).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(models.weight_parameters(model), lr=0.1, momentum=0.9, weight_decay=5e-4)
        tr = Trainer(model, opt, "at", eps=EPS, alpha=ALPHA, steps=10, device=DEV, channels_last=True,
                     amp="bf16" if DEV == "cuda" else None)
        nb = images // batch
        losses = []
        for epoch in range(2):  # the first epoch warms up (cuDNN choices, allocator)
            sync()
            t0 = time.perf_counter()
            for i in range(nb):
                r = tr.train_step(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
            losses.append(float(r["loss"]))
            sync()
            dt = time.perf_counter() - t0
        rows.append(dict(model=name, params_m=models.num_parameters(model) / 1e6, batch=batch,
                         images=nb * batch, seconds=dt, images_per_s=nb * batch / dt,
                         loss_first=losses[0], loss_last=losses[-1]))
        del model, opt, tr
    base = rows[0]["images_per_s"]
    for r in rows:
        r["vs_preact"] = r["images_per_s"] / base
    write(out, "architectures", rows, ["model", "params_m", "batch", "images", "images_per_s", "vs_preact",
                                       "loss_first", "loss_last"],
          f"PGD-10 AT (ε = 8/255, α = 2/255), bf16 autocast, channels_last, batch {batch}, the second "
          f"epoch over {images} random CIFAR-sized images timed. CIFS trains on its joint loss of three "
          "heads; DS-Net steps α with its own Adam.")


# ----------------------------------------------------------------------------- (d) backends
def stage_backends(out: Path, iters: int) -> None:
    rows = []
    fast = [b for b in ops.available_backends(DEV) if b != "reference"]
    for n in SIZES["backend_ns"]:
        x_nat = torch.rand(n, 3, 32, 32, device=DEV)
        grad, x = torch.randn_like(x_nat), x_nat.clone()
        logits = torch.randn(n, 10, device=DEV)
        y = torch.randint(0, 10, (n,), device=DEV)
        budget, kappa = torch.zeros(n, dtype=torch.int64, device=DEV), torch.zeros(n, dtype=torch.int64, device=DEV)
        leave = torch.rand(n, device=DEV) < 0.3
        dest, m = ops.compaction_plan(leave)
        index, leavers = torch.arange(n, device=DEV), torch.empty_like(x)
        calls = {
            "linf_step_": lambda: ops.linf_step_(x, grad, x_nat, EPS, ALPHA, check=False),
            "l2_step_": lambda: ops.l2_step_(x, grad, x_nat, 0.5, 0.1, check=False),
            "random_start": lambda: ops.random_start(x_nat, EPS, check=False),
            "early_stop_update_": lambda: ops.early_stop_update_(logits, y, budget, kappa),
            "compaction_plan (+host read)": lambda: ops.compaction_plan(leave),
            "compact_rows": lambda: ops.compact_rows(x, dest, m, index, leavers, check=False),
            "linf_step_compact": lambda: ops.linf_step_compact(x, grad, x_nat, EPS, ALPHA, dest, m, index, leavers,
                                                               check=False),
            "linf_fosc_step_": lambda: ops.linf_fosc_step_(x, grad, x_nat, x_nat, EPS, ALPHA, 0.1, check=False),
        }
        for op, fn in calls.items():
            t = {}
            for backend in fast:
                os.environ["FASTADV_BACKEND"] = backend
                # Per-call wall time of 20 back-to-back calls (launch costs included), median of rounds.
                rounds = []
                for _ in range(max(5, iters // 3)):
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(20):
                        fn()
                    sync()
                    rounds.append((time.perf_counter() - t0) / 20)
                t[backend] = median(rounds)
            os.environ.pop("FASTADV_BACKEND", None)
            row = dict(batch=n, op=op, **{f"{b}_us": v * 1e6 for b, v in t.items()})
            row["faster"] = min(t, key=t.get)
            rows.append(row)
    write(out, "backends", rows, ["batch", "op"] + [f"{b}_us" for b in fast] + ["faster"],
          "fp32, 3×32×32, per-call wall time incl. launch (20 back-to-back calls). The default CUDA order "
          "(fastadv/ops/dispatch.py) should put first the backend that is faster on most rows.")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=("kernels", "attack", "epoch", "backends", "architectures"))
    ap.add_argument("--out", default="benchmarks/results/gpu")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any device (checks the script)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    global DEV
    DEV = args.device
    if args.smoke:
        SIZES.update(SMOKE)
    elif DEV != "cuda" or not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --smoke --device cpu to check the script)")
    # cudnn.benchmark stays off: compaction gives every check a new batch size, and re-tuning the
    # convolutions for each would land inside the timed attacks and epochs.
    out = Path(args.out)
    {"kernels": lambda: stage_kernels(out, args.iters), "attack": lambda: stage_attack(out, args.iters),
     "epoch": lambda: stage_epoch(out, args.images), "backends": lambda: stage_backends(out, args.iters),
     "architectures": lambda: stage_architectures(out, args.images)}[args.stage]()


if __name__ == "__main__":
    main()
