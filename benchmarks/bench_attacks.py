"""Attacks under pytest-benchmark (issue #3): PGD-10, FAT's early-stopped PGD-10-τ (τ = 0 … 3,
compacted and masked), the port of the official per-sample loop (τ = 0, 1) and torchattacks' PGD-10
(the library users would otherwise pick; `make setup` installs it).

    python -m pytest benchmarks/bench_attacks.py --benchmark-only -q [--fastadv-size=gpu]

``cpu`` size: the small CNN on the bundled digits, batch 128, ε = 0.2, α = 0.05, 2 threads.
``gpu`` size: PreActResNet-18 on CIFAR-10-shaped data, batch 512, ε = 8/255, α = 2/255.
The model is trained briefly first (cached; see ``benchmarks/attack_speed.py``) so that early stops
happen. Every case records ``bp``, ``bp_executed``, ``rows_computed``, ``images_per_sec`` and the
device in ``extra_info``. Timing ratios are *reported* by ``python -m benchmarks.attack_speed``,
never asserted here (this file also runs under ``--benchmark-disable`` in CI).
"""
import pytest
import torch

from benchmarks.attack_speed import build, cases

CASES = (["pgd10"] + [f"es_tau{t}_{m}" for t in (0, 1, 2, 3) for m in ("compact", "masked")]
         + ["official_tau0", "official_tau1", "torchattacks_pgd10"])


@pytest.fixture(autouse=True)
def _two_threads(bench_size):
    before = torch.get_num_threads()
    if bench_size == "cpu":
        torch.set_num_threads(2)  # the CPU target is stated for 2 threads
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(bench_size):
    if bench_size == "gpu" and not torch.cuda.is_available():
        pytest.skip("--fastadv-size=gpu needs a CUDA device")
    s = build(bench_size)
    s["cases"] = cases(s)
    return s


@pytest.mark.parametrize("case", CASES)
def test_attack(benchmark, setup, case):
    if case not in setup["cases"]:
        pytest.skip(f"{case}: torchattacks is not installed (make setup installs it)")
    fn = setup["cases"][case]
    if setup["device"].startswith("cuda"):
        inner = fn

        def fn():
            r = inner()
            torch.cuda.synchronize()
            return r
    fn()  # warm-up
    benchmark.group = (f"attack: {setup['model_name']} on {setup['data']}, batch {setup['batch']}, "
                       f"K = 10, {setup['device']}")
    counts = benchmark(fn)
    n = setup["batch"]
    # Per image, like every other group (PGD-10 = 10.00); the batch totals kept beside them.
    benchmark.extra_info.update(device=setup["device"], batch=n, baseline=case == "pgd10",
                                library="torchattacks" if case.startswith("torchattacks") else "fastadv",
                                bp=counts["bp"] / n, bp_executed=counts["bp_executed"] / n,
                                rows_computed_per_image=counts["rows_computed"] / n,
                                bp_total=counts["bp"], bp_executed_total=counts["bp_executed"])
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_sec"] = round(setup["batch"] / benchmark.stats.stats.median, 1)
    n, k = setup["batch"], 10
    assert 0 <= counts["bp"] <= n * k and counts["bp"] <= counts["bp_executed"] <= n * k
    if case in ("pgd10", "torchattacks_pgd10") or case.endswith("masked"):
        assert counts["rows_computed"] >= counts["bp_executed"]
    else:
        assert counts["rows_computed"] == counts["bp_executed"]


def test_bench_cases_agree(setup):
    """Plain checks (no timing): on the benchmark batch, from x itself, the compacted and masked
    attacks and the official loop take the same number of updates for every sample."""
    from benchmarks.official_loop import official_earlystop
    from fastadv import attacks
    m, x, y = setup["model"], setup["x"], setup["y"]
    kw = dict(eps=setup["eps"], alpha=setup["alpha"], steps=10, random_start=None)
    for tau in (0, 1):
        a = attacks.EarlyStopPGD(m, tau=tau, **kw).run(x, y)
        b = attacks.EarlyStopPGD(m, tau=tau, compact=False, **kw).run(x, y)
        off = official_earlystop(m, x, y, tau=tau, **kw)
        for p in m.parameters():
            p.grad = None
        assert torch.equal(a.updates, b.updates)
        assert torch.equal(off.restore(off.updates), a.updates)
        assert a.bp == b.bp == off.bp
        assert a.rows_computed == a.bp_executed < b.rows_computed
