"""Distributed (DDP) training on two CPU processes with the gloo backend.

The two-process runs are launched with ``python -m torch.distributed.run --standalone`` (a free
port is picked by the rendezvous; works offline). This file is also the worker script those
launches run (``python -m torch.distributed.run ... tests/test_distributed.py MODE OUT ARGS``).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"seconds", "images_per_sec", "eval_seconds"}
# The BP/resume runs: fat with tau >= K and no random start, 256 digits, global batch 64.
RUN = dict(method="fat", tau=10, random_start="none", dataset="digits", train_samples=256,
           eval_samples=64, epochs=3, batch_size=64, progress=False, verbose=False)
METHODS = ("standard", "at", "fat", "trades", "fat-trades", "mart", "fat-mart", "gairat",
           "gair-fat", "dat", "gair-rst", "noilin-at")


# ============================================================================ worker side
def _worker_trainer(out: Path, spec: dict) -> None:
    """Every method through Trainer + ShardedBatchLoader; after each epoch dump this rank's
    weights, row and local sums."""
    import fastadv
    from fastadv.data import load_dataset
    from fastadv.models import create
    from fastadv.training import distributed as D
    device, created = D.init_distributed("cpu")
    assert created and D.get_world_size() == 2
    rank = D.get_rank()
    train = load_dataset("digits", split="train").subset(slice(0, spec["train_samples"]))
    test = load_dataset("digits", split="test").subset(slice(0, spec["eval_samples"]))
    for method, epochs in spec["methods"].items():
        torch.manual_seed(0)
        if method == "at-bn":  # per-rank BatchNorm, running statistics averaged per epoch
            model = torch.nn.Sequential(
                torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))
        else:
            model = create("small_cnn", num_classes=10, in_channels=1)
        torch.manual_seed(D.rank_seed(0, rank))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        extra = {"tau": 1} if method.startswith("fat") or method == "gair-fat" else {}
        if method in ("gairat", "gair-fat", "gair-rst"):
            extra["gair_start"] = 0  # gair-rst: its C&W attack from the first epoch
        trainer = fastadv.Trainer(model, opt, method.replace("-bn", ""), eps=0.2, alpha=0.05, steps=5,
                                  epochs=epochs, **extra)
        assert trainer.distributed and trainer.ddp is not None
        loader = D.ShardedBatchLoader(train, batch_size=spec["batch_size"], seed=0, device=device)
        for e in range(epochs):
            row = trainer.train_epoch(loader, e)
            row.update(trainer.evaluate(test))
            torch.save({"row": row, "local": trainer.local_stats,
                        "state": {k: v.clone() for k, v in trainer.model.state_dict().items()}},
                       out / f"{method}_e{e}_r{rank}.pt")
    del trainer  # its DDP wrapper goes before the process group it uses
    D.cleanup_distributed()


def _worker_train(out: Path, spec: dict) -> None:
    """fastadv.train(**spec) under torchrun; dump this rank's final weights and history."""
    import fastadv
    from fastadv.training import distributed as D
    res = fastadv.train(**spec)
    torch.save({"history": res.history, "state": res.model.state_dict(),
                "rank": int(os.environ["RANK"]), "group_left": not D.is_distributed()},
               out / f"final_r{os.environ['RANK']}.pt")


def _worker_main(argv) -> None:
    mode, out, spec = argv[0], Path(argv[1]), json.loads(argv[2])
    {"trainer": _worker_trainer, "train": _worker_train}[mode](out, spec)


# ============================================================================ test side
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *args]


def _worker(mode, out, spec):
    return _torchrun(str(Path(__file__).resolve()), mode, str(out), json.dumps(spec))


def _run(cmd, timeout=120):
    p = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def _strip(history):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("n,world,batch", [(20, 2, 4), (23, 3, 2), (5, 4, 3)])
def test_sharded_loader_splits_the_global_batches(n, world, batch):
    from fastadv.data import BatchLoader
    from fastadv.training.distributed import ShardedBatchLoader
    g = torch.Generator().manual_seed(1)
    data = (torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=g), torch.arange(n))
    ref = BatchLoader(data, batch_size=batch * world, augment="crop-flip", device="cpu", seed=3)
    shards = [ShardedBatchLoader(data, batch_size=batch, rank=r, world_size=world,
                                 augment="crop-flip", device="cpu", seed=3) for r in range(world)]
    pad = -n % world
    for epoch in (0, 1):
        per_rank = [list(s.epoch_batches(epoch)) for s in shards]
        # Equal counts per rank: the same number of batches and samples everywhere.
        assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(shards[0])
        assert {sum(len(y) for _, y in b) for b in per_rank} == {-(-n // world)}
        assert all(s.num_padded == pad for s in shards)
        seen = torch.cat([y for b in per_rank for _, y in b])
        # Padding: every sample once, plus the epoch's first `pad` samples a second time.
        assert seen.numel() == n + pad and set(seen.tolist()) == set(range(n))
        # The ranks' i-th batches together are the one-process loader's i-th global batch
        # (same samples, same crops and flips).
        # (same samples, same crops and flips), the padding being the epoch's first samples again.
        full = list(ref.epoch_batches(epoch))
        xa, ya = torch.cat([x for x, _ in full]), torch.cat([y for _, y in full])
        xa, ya = torch.cat([xa, xa[:pad]]), torch.cat([ya, ya[:pad]])
        assert len(per_rank[0]) == -(-(n + pad) // (batch * world))
        for i in range(len(per_rank[0])):
            xs = torch.cat([per_rank[r][i][0] for r in range(world)])
            ys = torch.cat([per_rank[r][i][1] for r in range(world)])
            rows = slice(i * batch * world, (i + 1) * batch * world)
            xe, ye = xa[rows], ya[rows]
            o, oe = torch.argsort(ys, stable=True), torch.argsort(ye, stable=True)
            assert torch.equal(ys[o], ye[oe]) and torch.equal(xs[o], xe[oe])
    # Per-epoch shuffling, the same permutation on every rank (one seed).
    e0 = torch.cat([y for _, y in shards[0].epoch_batches(0)])
    e1 = torch.cat([y for _, y in shards[0].epoch_batches(1)])
    assert not torch.equal(e0, e1)
    assert torch.equal(shards[0].epoch_plan(1)[0], shards[-1].epoch_plan(1)[0])


def test_sharded_loader_single_rank_is_the_plain_loader():
    from fastadv.data import BatchLoader
    from fastadv.training.distributed import ShardedBatchLoader
    data = (torch.rand(13, 1, 4, 4), torch.arange(13))
    a = list(BatchLoader(data, batch_size=5, device="cpu", seed=2).epoch_batches(4))
    b = list(ShardedBatchLoader(data, batch_size=5, rank=0, world_size=1, device="cpu",
                                seed=2).epoch_batches(4))
    assert len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v)
                                    for (x, y), (u, v) in zip(a, b))
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchLoader(data, batch_size=5, rank=2, world_size=2, device="cpu")


def test_distributed_options_are_validated():
    import fastadv
    from fastadv.training.config import resolve_config
    assert resolve_config("fat", random_start="none").random_start == "none"
    with pytest.raises(ValueError, match="random_start"):
        resolve_config("fat", random_start="gaussian")
    with pytest.raises(ValueError, match="random_start"):
        resolve_config("standard", random_start="uniform")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="distributed"):
        fastadv.Trainer(model, opt, "at", distributed=True)
    with pytest.raises(ValueError, match="sync_bn"):
        fastadv.Trainer(model, opt, "at", sync_bn=True)
    assert fastadv.Trainer(model, opt, "at", random_start=None).attack.random_start is None


# ---------------------------------------------------------------------------- two processes
def test_every_method_two_ranks_identical_weights_and_reduced_stats(tmp_path):
    spec = {"train_samples": 96, "eval_samples": 30, "batch_size": 16,
            "methods": {m: (2 if m in ("fat", "at-bn") else 1) for m in METHODS + ("at-bn",)}}
    _run(_worker("trainer", tmp_path, spec), timeout=240)
    for method, epochs in spec["methods"].items():
        for e in range(epochs):
            r0, r1 = (torch.load(tmp_path / f"{method}_e{e}_r{r}.pt", weights_only=False)
                      for r in (0, 1))
            assert _same_state(r0["state"], r1["state"]), (method, e)  # identical after each epoch
            assert _strip([r0["row"]]) == _strip([r1["row"]]), (method, e)
            row, loc = r0["row"], (r0["local"], r1["local"])
            n = loc[0]["n"] + loc[1]["n"]
            assert loc[0]["n"] == loc[1]["n"] == 48  # equal shards
            bp = loc[0]["bp"] + loc[1]["bp"]
            assert row["bp_avg"] == (bp / n if method != "standard" else 0.0)
            assert row["bp_executed_avg"] == ((loc[0]["bp_executed"] + loc[1]["bp_executed"]) / n
                                              if method != "standard" else 0.0)
            nat = loc[0]["nat_correct"] + loc[1]["nat_correct"]
            assert row["train_nat_acc"] == 100.0 * nat / n
            if method != "standard":
                assert row["train_adv_acc"] == 100.0 * (loc[0]["adv_correct"]
                                                        + loc[1]["adv_correct"]) / n
                assert 0 < row["bp_avg"] <= 5 * (2 if method == "gair-rst" else 1)
            assert row["train_loss"] == pytest.approx((loc[0]["loss_sum"] + loc[1]["loss_sum"]) / n)
            ev = (loc[0]["eval"], loc[1]["eval"])
            assert ev[0]["n"] + ev[1]["n"] == 30 and ev[0]["n"] == 15
            for key, name in (("test_nat_acc", "natural"), ("test_pgd20_acc", "pgd20")):
                assert row[key] == 100.0 * (ev[0]["correct"][name] + ev[1]["correct"][name]) / 30
    # PGD-K: AT's bp is exactly K per sample.
    assert torch.load(tmp_path / "at_e0_r0.pt", weights_only=False)["row"]["bp_avg"] == 5.0
    # BatchNorm: per-rank batch statistics, then the running statistics averaged (not rank 0's
    # alone, not left apart): moved away from their initial values, equal on both ranks.
    bn = torch.load(tmp_path / "at-bn_e1_r0.pt", weights_only=False)["state"]
    assert not torch.equal(bn["1.running_mean"], torch.zeros(8))
    assert int(bn["1.num_batches_tracked"]) == 2 * 3  # 2 epochs × 3 steps of 16 per rank


@pytest.fixture(scope="module")
def two_rank_cli_run(tmp_path_factory):
    """An uninterrupted 2-process run through the CLI (torchrun -m fastadv train)."""
    out = tmp_path_factory.mktemp("cli2") / "run"
    args = ["-m", "fastadv", "train", "--method", "fat", "--tau", "10", "--random-start", "none",
            "--dataset", "digits", "--train-samples", "256", "--eval-samples", "64",
            "--epochs", "3", "--batch-size", "64", "--no-progress", "--out-dir", str(out)]
    p = _run(_torchrun(*args), timeout=180)
    return out, p.stdout


def test_two_ranks_report_the_one_rank_bp_total(two_rank_cli_run, tmp_path):
    import fastadv
    out, stdout = two_rank_cli_run
    assert "2 processes (cpu" in stdout and stdout.count("fastadv: fat") == 1  # rank 0 prints
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng_per_rank"]) == 2
    assert not torch.equal(ck["rng_per_rank"][0]["torch"], ck["rng_per_rank"][1]["torch"])
    two = ck["history"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the torchrun workers (a shared 2-core machine: ~7x faster)
    try:
        one = fastadv.train(**dict(RUN, out_dir=False)).history
    finally:
        torch.set_num_threads(threads)
    assert len(one) == len(two) == 3
    steps = 10
    for a, b in zip(one, two):
        # Same data, τ ≥ K, no random start: Σ updates and Σ checks are the one-process totals.
        assert a["bp_avg"] * 256 == b["bp_avg"] * 256 == steps * 256
        assert a["bp_executed_avg"] == b["bp_executed_avg"]
        assert a["bp_saved"] == b["bp_saved"] == 0.0
    assert json.loads((out / "history.json").read_text())[-1]["epoch"] == 3


def test_killed_two_rank_run_resumes_from_its_checkpoint(two_rank_cli_run, tmp_path):
    ref_out, _ = two_rank_cli_run
    out = tmp_path / "run"
    spec = dict(RUN, out_dir=str(out))
    proc = subprocess.Popen(_worker("train", tmp_path, spec), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    last = out / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher's process group: launcher and workers
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    cut = torch.load(last, weights_only=True)
    assert 1 <= cut["epoch"] < 3, "killed too late"
    assert not (tmp_path / "final_r0.pt").exists()

    _run(_worker("train", tmp_path, dict(spec, resume=True)), timeout=180)
    r0, r1 = (torch.load(tmp_path / f"final_r{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["group_left"] and r1["group_left"]  # train() destroyed the group it created
    assert _same_state(r0["state"], r1["state"])  # the ranks agree after the resume
    hist = torch.load(last, weights_only=True)["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert hist[:cut["epoch"]] == cut["history"]  # the checkpointed epochs are kept as they were
    assert _strip(r0["history"]) == _strip(r1["history"]) == _strip(hist)
    # Every rank's RNG states were restored: the resumed run is the uninterrupted one.
    assert _strip(hist) == _strip(torch.load(ref_out / "last.pt", weights_only=True)["history"])
    assert not list(out.glob("*.tmp"))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])


@pytest.mark.parametrize("case", ["occupied folder", "missing data"])
def test_a_user_error_on_rank_0_stops_every_rank(two_rank_cli_run, tmp_path, case):
    """Rank 0 decides about the folder and loads the data first; its user error must reach the
    other rank (which would otherwise wait in a collective until a timeout) in one line each."""
    out, _ = two_rank_cli_run
    before = (out / "last.pt").read_bytes()
    args = ["-m", "fastadv", "train", "--dataset", "digits", "--train-samples", "256",
            "--epochs", "3", "--batch-size", "64", "--no-progress"]
    if case == "occupied folder":
        args += ["--out-dir", str(out)]
        needle = "holds a run"
    else:
        args += ["--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--no-download",
                 "--out-dir", str(tmp_path / "run")]
        needle = "is not in"
    t0 = time.perf_counter()
    p = subprocess.run(_torchrun(*args), env=_env(), cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and time.perf_counter() - t0 < 100
    # Each rank that gets to print (torchrun stops the others as soon as one exits) prints one line.
    errors = [line for line in p.stderr.splitlines() if line.startswith("fastadv train: error:")]
    assert 1 <= len(errors) <= 2 and all(needle in e for e in errors), p.stderr[-3000:]
    # No worker traceback (the launcher prints its own ChildFailedError, naming exit code 2).
    assert not [line for line in p.stderr.splitlines() if 'File "' in line and "/fastadv/" in line]
    assert "exitcode  : 2" in p.stderr
    assert (out / "last.pt").read_bytes() == before
