"""The ``fastadv`` command: train (table, files, errors), eval (table + JSON), plot (PNG)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastadv.cli import _number, main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--train-samples", "128", "--eval-samples", "32", "--epochs", "2",
        "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "fat"
    assert main(["train", "--method", "fat", "--tau", "1", *TINY, "--out-dir", str(out)]) == 0
    return out


def test_train_writes_the_run(run_dir):
    assert {"history.json", "history.csv", "last.pt", "best.pt"} <= {p.name for p in run_dir.iterdir()}
    hist = json.loads((run_dir / "history.json").read_text())
    assert [r["tau"] for r in hist] == [1, 1] and all(r["bp_avg"] < 10 for r in hist)


def test_train_output(tmp_path, capsys):
    assert main(["train", "--method", "at", *TINY, "--epochs", "1", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.split()[:2] == ["epoch", "lr"])
    assert "BP" in header.split() and "saved%" in header.split() and "pgd20%" in header.split()
    row = out.splitlines()[out.splitlines().index(header) + 1].split()
    assert row[0] == "1" and "10.00" in row  # PGD-10: 10.00 BPs per image
    assert "0.0% saved" in out


@pytest.mark.parametrize("argv,name", [
    (["train", "--method", "at", "--tau", "1"], "tau"),
    (["train", "--method", "fat", "--eps", "-0.1"], "eps"),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/fastadv", "--no-download"], "mnist"),
    (["eval", "/nonexistent/best.pt"], "checkpoint"),
    (["plot", "/nonexistent/run"], "run_dir"),
])
def test_errors_are_one_clear_line(argv, name, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastadv {argv[0]}: error:") and name in err


def test_unknown_method_is_one_line_naming_the_option(capsys):
    assert main(["train", "--method", "pgd-at"]) == 2
    err = capsys.readouterr().err
    # The papers' name for PGD AT is suggested, not the spelling neighbour 'dat'.
    assert "--method: unknown method 'pgd-at' (did you mean 'at'?)" in err
    assert main(["train", "--method", "xyzzy"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_numbers_accept_fractions():
    assert _number("8/255") == pytest.approx(8 / 255) and _number("0.5") == 0.5
    assert _number("inf") == float("inf")


def test_eval_checkpoint_writes_json(run_dir, capsys):
    out = run_dir / "eval.json"
    assert main(["eval", str(run_dir / "best.pt"), "--attacks", "natural", "pgd20", "--max-samples",
                 "40", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 40 and res["eps"] == pytest.approx(0.2)
    assert set(res["accuracy"]) == {"natural", "pgd20"}
    assert res["accuracy"]["pgd20"] <= res["accuracy"]["natural"]
    printed = capsys.readouterr().out
    assert "natural" in printed and "pgd20" in printed
    # default JSON path: beside the checkpoint
    assert main(["eval", str(run_dir / "last.pt"), "--attacks", "natural", "--max-samples", "8",
                 "--any-iterate"]) == 0
    assert json.loads((run_dir / "eval_last.json").read_text())["any_iterate"] is True
    # --rows-per-pass reaches the attacks: a bad one is named
    assert main(["eval", str(run_dir / "last.pt"), "--attacks", "fgsm", "--max-samples", "8",
                 "--rows-per-pass", "0"]) == 2
    assert "rows_per_pass" in capsys.readouterr().err


def test_eval_autoattack(run_dir, tmp_path, capsys):
    out = tmp_path / "aa.json"
    assert main(["eval", str(run_dir / "best.pt"), "--attacks", "natural", "--autoattack", "lite",
                 "--max-samples", "24", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["accuracy"]) == {"natural", "aa-lite"}
    assert res["accuracy"]["aa-lite"] <= res["accuracy"]["natural"]
    assert "aa-lite" in capsys.readouterr().out


def test_autoattack_flag_before_the_checkpoint(tmp_path, capsys):
    from fastadv.cli import _autoattack_flag_before_path, _parser
    parse = lambda *a: _parser().parse_args(_autoattack_flag_before_path(["eval", *a]))
    args = parse("--autoattack", "run/best.pt")
    assert (args.autoattack, args.checkpoint) == ("standard", "run/best.pt")
    args = parse("--autoattack", "lite", "run/best.pt")
    assert (args.autoattack, args.checkpoint) == ("lite", "run/best.pt")
    args = parse("run/best.pt", "--autoattack")
    assert (args.autoattack, args.checkpoint) == ("standard", "run/best.pt")
    with pytest.raises(SystemExit):  # a mistyped version stays argparse's "invalid choice"
        parse("--autoattack", "lte", "run/best.pt")
    assert "invalid choice: 'lte'" in capsys.readouterr().err
    # through main: the path is read as the checkpoint (a missing file), not as a version
    assert main(["eval", "--autoattack", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert "none.pt" in err and "invalid choice" not in err


def test_train_with_autoattack_lite_column(tmp_path, capsys):
    out = tmp_path / "aa-run"
    assert main(["train", "--method", "at", *TINY, "--eval-autoattack", "lite", "--out-dir", str(out)]) == 0
    hist = json.loads((out / "history.json").read_text())
    assert all(0 <= r["test_aa_acc"] <= r["test_nat_acc"] for r in hist)
    assert " aa%" in capsys.readouterr().out


def test_plot_writes_a_png(run_dir):
    assert main(["plot", str(run_dir)]) == 0
    png = (run_dir / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "fastadv", "train", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--method" in r.stdout and "--resume" in r.stdout
