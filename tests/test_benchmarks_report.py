"""benchmarks/report.py: pytest-benchmark JSON → Markdown table (+ PNGs), on a synthetic JSON."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import report  # noqa: E402


def _bench(name, group, median, **extra):
    return {"name": name, "group": group, "stats": {"median": median, "mean": median, "rounds": 3},
            "extra_info": extra}


TRAIN = "train_epoch digits: small_cnn, batch 128, fp32, 512 images, K=10, cpu"
KERN = "linf_step cpu fp32 128x3x32x32"
LOADER = "loader: one epoch, CIFAR-shaped, batch 128"


@pytest.fixture
def data():
    return {
        "datetime": "2026-11-25T12:00:00.000000+00:00",
        "machine_info": {"torch": "2.13.0+cpu", "triton": "3.9.0", "cuda_device": None,
                         "cpu": {"brand_raw": "Test CPU"}, "cpu_threads": 2, "cpu_count": 2,
                         "fastadv_size": "cpu", "load_avg_at_start": [6.1, 5.0, 4.2],
                         "note": "timed under contention"},
        "benchmarks": [
            # training: at is the baseline; fat saves BPs (bp keys as bench_training writes them)
            _bench("test_train_epoch[small_cnn-b128-fp32-fat-tau1]", TRAIN, 0.5, method="fat",
                   tau=1, device="cpu (1 threads)", data="digits", baseline=False, bp=2.345,
                   bp_executed=3.1, images_per_sec=1024.0),
            _bench("test_train_epoch[small_cnn-b128-fp32-at]", TRAIN, 2.0, method="at", tau="",
                   device="cpu (1 threads)", data="digits", baseline=True, bp=10.0,
                   bp_executed=10.0, images_per_sec=256.0),
            # the _avg spelling (e.g. an attack benchmark) is accepted too
            _bench("test_train_epoch[small_cnn-b128-fp32-gairat]", TRAIN, 2.5, method="gairat",
                   tau="", device="cpu (1 threads)", data="digits", baseline=False, bp_avg=10.0,
                   bp_executed_avg=10.0, images_per_sec=204.8),
            # kernels: no images/s on one case → speed-up from the medians
            _bench("test_linf_step[cpu-128-fp32-eager]", KERN, 4e-4, backend="eager",
                   bytes=6291456, baseline=True),
            _bench("test_linf_step[cpu-128-fp32-api:native]", KERN, 1e-4, backend="native",
                   bytes=6291456, baseline=False, gb_per_s=62.9),
            # loader: the baseline times fewer images, so the speed-up must use images/s
            _bench("test_per_sample_augmentation_baseline", LOADER, 1.0, baseline=True,
                   images_per_sec=1280.0),
            _bench("test_batch_loader_epoch[crop-flip]", LOADER, 0.5, device="cpu",
                   images_per_sec=10240.0),
            # no group, no extra_info
            {"name": "test_lonely", "group": None, "stats": {"median": 3e-6}, "extra_info": {}},
        ],
    }


def _row(md, case):
    lines = [l for l in md.splitlines() if l.startswith(f"| {case} ")]
    assert len(lines) == 1, (case, md)
    return [c.strip() for c in lines[0].strip("|").split("|")]


def test_header(data):
    md = report.table(data)
    assert "2026-11-25 12:00:00" in md
    assert "torch 2.13.0+cpu" in md and "triton 3.9.0" in md
    assert "CPU (Test CPU, 2 torch threads of 2 cores)" in md
    assert "load average at start 6.1/5/4.2" in md
    assert "**Note:** timed under contention" in md
    assert "| " + " | ".join(report.COLUMNS) + " |" in md


def test_training_group(data):
    md = report.table(data)
    assert f"### {TRAIN}" in md
    # keys shared by every case of the group are printed once, not in the notes
    assert "device: cpu (1 threads); data: digits" in md
    at = _row(md, "small_cnn-b128-fp32-at (baseline)")
    assert at[1:6] == ["2 s", "256", "10.00", "10.00", "1.00×"]
    assert at[6] == "method=at"  # shared keys and empty values are left out
    fat = _row(md, "small_cnn-b128-fp32-fat-tau1")
    assert fat[1:6] == ["500 ms", "1,024", "2.35", "3.10", "4.00×"]
    assert "tau=1" in fat[6]
    gairat = _row(md, "small_cnn-b128-fp32-gairat")
    assert gairat[3:6] == ["10.00", "10.00", "0.80×"]
    # the baseline is listed first, then the JSON order
    body = md[md.index(f"### {TRAIN}"):]
    assert body.index("fp32-at (baseline)") < body.index("fat-tau1") < body.index("gairat")


def test_kernel_and_loader_groups(data):
    md = report.table(data)
    native = _row(md, "cpu-128-fp32-api:native")
    assert native[1] == "100 µs" and native[2] == "" and native[3] == "" and native[5] == "4.00×"
    assert "gb_per_s=62.9" in native[6] and "backend=native" in native[6]
    # the loader's baseline timed 1,280 images and the loader 10,240: 8× by images/s (not 2×)
    assert _row(md, "crop-flip")[5] == "8.00×"
    assert _row(md, "test_per_sample_augmentation_baseline (baseline)")[5] == "1.00×"
    lonely = _row(md, "test_lonely")
    assert lonely[1] == "3 µs" and lonely[5] == ""


def test_empty_and_statless_json():
    md = report.table({"machine_info": {}, "benchmarks": [{"name": "x", "stats": None}]})
    assert "no benchmark results" in md


def test_cli_writes_markdown_and_pngs(data, tmp_path, capsys):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "run.md"
    assert report.main([str(src), "--out", str(out)]) == 0
    md = out.read_text()
    assert "### " + TRAIN in md and "4.00×" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "run.png").stat().st_size > 0
    assert (tmp_path / "run_bp.png").stat().st_size > 0
    assert "![run.png](run.png)" in md and "![run_bp.png](run_bp.png)" in md


def test_cli_prints_without_out(data, tmp_path, capsys):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(data))
    assert report.main([str(src)]) == 0
    assert "### " + KERN in capsys.readouterr().out
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing.json")])


def test_autoattack_compaction_floor(tmp_path):
    """The official time spent on points that stay robust through each attack: attack A gets
    100 points, 50 stay robust (floor 0.5 × 10 s); attack B gets those 50, all stay (20 s)."""
    from benchmarks.autoattack_compare import compaction_bound, write_markdown
    official = {"a": {"seconds": 10.0, "points_in": 100, "robust_after": 0.25},
                "b": {"seconds": 20.0, "points_in": 50, "robust_after": 0.25}}
    b = compaction_bound(official, points=200)  # robust_after is a share of all 200 points
    assert b["floor_seconds"] == pytest.approx(5.0 + 20.0)
    assert b["max_speedup"] == pytest.approx(30.0 / 25.0)
    assert compaction_bound({"a": {"seconds": 3.0, "points_in": 10, "robust_after": 0.0}}, 10) == \
        {"floor_seconds": 0.0, "max_speedup": None}
    fast = {k: dict(v, seconds=v["seconds"] / 2) for k, v in official.items()}
    result = {"eps": 0.3, "points": 200, "clean": 0.5, "torch": "x", "threads": 1, "machine": "m",
              "date": "d", "runs": {"official": official, "fastadv": fast}, "official_seconds": 30.0,
              "fastadv_seconds": 15.0, "official_robust": 0.25, "fastadv_robust": 0.25,
              "agree_point_for_point": True, "compaction_bound": b}
    write_markdown(result, str(tmp_path / "aa.md"))
    text = (tmp_path / "aa.md").read_text()
    assert "spends 25.0 s of its 30.0 s" in text and "at most 1.20× faster" in text
    assert "| a | 100 | 10.0 | 5.0 | 2.00× |" in text
    assert "Control" not in text
    slow = {k: dict(v, seconds=v["seconds"] * 0.8) for k, v in official.items()}
    result = dict(result, runs=dict(result["runs"], official_bs64=slow), official_bs64_seconds=24.0,
                  official_bs64_robust=0.25)
    write_markdown(result, str(tmp_path / "aa.md"))
    text = (tmp_path / "aa.md").read_text()
    assert "| a | 100 | 10.0 | 5.0 | 2.00× | 25.00% | 25.00% | 0 | 0 | 8.0 | 25.00% |" in text
    assert "bs=64 took 24.0 s (1.60× fastadv's time; 1.25× faster than itself at bs=250)" in text
