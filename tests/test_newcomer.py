"""Issue #10: a newcomer's first hour. The set-up is idempotent and lean, the README's example is
what the code prints, every option has help in the CLI's own words, the refusals hold, and results
can be compared at a glance."""
import argparse
import importlib.util
import json
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastadv
from fastadv.cli import _parser, cli_names, main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--train-samples", "128", "--eval-samples", "32", "--no-progress"]


def _setup_env():
    spec = importlib.util.spec_from_file_location("setup_env", REPO / "scripts" / "setup_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _one_line_error(capsys, command="train"):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fastadv {command}: error:") and "\n" not in err, err
    return err


# ============================================================================ set-up
def test_setup_lists_match_pyproject():
    import tomllib
    setup = _setup_env()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[<>=\[ ]", d)[0] for d in project["dependencies"]} - {"torch"}
    assert deps <= set(setup.BASE)
    extras = project["optional-dependencies"]
    assert set(setup.NEEDS["test"]) == {re.split(r"[<>=\[ ]", d)[0] for d in extras["test"]}
    assert set(setup.NEEDS["demo"]) == {re.split(r"[<>=\[ ]", d)[0] for d in extras["digits"]}
    assert "triton" not in setup.NEEDS["demo"]  # the demo does not pull in 1 GB of triton


def test_setup_plans_a_rebuild_only_when_something_changed(monkeypatch):
    setup = _setup_env()
    key = setup.build_key()
    monkeypatch.setattr(setup, "_read_stamp", lambda: dict(key))
    monkeypatch.setattr(setup, "_fastadv_installed", lambda: True)
    monkeypatch.setattr(setup, "_extension_present", lambda: True)
    monkeypatch.setattr(setup, "_have", lambda module: True)
    monkeypatch.setattr(setup.md, "version", lambda name: {"torchattacks": "3.5.1"}.get(
        name, key["torch"]))
    assert setup.plan("test") == [] and setup.plan("demo") == []
    for field in ("torch", "sources", "project", "python"):  # any change: rebuild
        monkeypatch.setattr(setup, "_read_stamp", lambda f=field: dict(key, **{f: "other"}))
        assert setup.plan("demo") == [["install", "--no-build-isolation", "--no-deps", "-e",
                                        str(REPO)]]
    monkeypatch.setattr(setup, "_read_stamp", lambda: dict(key))
    monkeypatch.setattr(setup, "_extension_present", lambda: False)
    assert len(setup.plan("demo")) == 1  # the library was deleted: rebuild
    monkeypatch.setattr(setup, "_extension_present", lambda: True)
    monkeypatch.setattr(setup, "_have", lambda module: module != "triton")
    assert setup.plan("demo") == [] and setup.plan("test") == [["install", "triton"]]


def test_setup_is_idempotent_after_make_test(capsys):
    """Where `make test` set this environment up (CI), a second set-up has nothing to do; in an
    environment set up by hand (no stamp) it would only build and stamp fastadv."""
    setup = _setup_env()
    assert setup.main(["test", "--dry-run"]) == 0
    out = capsys.readouterr().out
    if os.environ.get("CI"):  # CI ran `make test`: its stamp must match, or every run rebuilds
        assert setup.STAMP.exists() and setup._read_stamp() == setup.build_key()
    if setup.STAMP.exists() and setup._read_stamp() == setup.build_key():
        assert "nothing to do" in out
    else:
        assert out.splitlines() == [f"setup: install --no-build-isolation --no-deps -e {REPO}"]


# ============================================================================ the README is true
def _readme_blocks() -> dict:
    """{torch's CPU capability (AVX512, AVX2, ...): the demo's example output lines} from the
    README, each block introduced by "where `torch.backends.cpu.get_cpu_capability()` is X" or
    "where it is X"."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"where (?:`torch\.backends\.cpu\.get_cpu_capability\(\)` is|it is) (\w+)"
                        r"[^`]*?```\n(BPs per training image over 20 epochs:.*?)\n```", text, re.S)
    assert blocks, "README: the demo's example output blocks are missing"
    return {kind: block.strip().splitlines() for kind, block in blocks}


def test_readme_example_output_is_what_the_demo_prints(capsys, tmp_path):
    """The README's block against a real run of `make demo`'s command (with the README's thread
    count: results depend on it, and on the CPU's vector instructions, which pick torch's
    kernels). On a kind of CPU the README has no block for, the run must still be plausible."""
    threads = int(re.search(r"with `--threads (\d+)`", (REPO / "README.md").read_text()).group(1))
    assert main(["train", "--method", "fat", "--tau", "1", "--threads", str(threads),
                 "--out-dir", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    got = [line for line in out if line.startswith(("BPs per training image", "final:"))]
    blocks = _readme_blocks()
    assert {"AVX512", "AVX2"} <= set(blocks)
    kind = torch.backends.cpu.get_cpu_capability()
    if kind in blocks:
        assert got == [e for e in blocks[kind] if e.startswith(("BPs per training image", "final:"))]
        return
    saved = float(re.search(r"PGD-10: ([\d.]+)% saved", got[0]).group(1))
    nat, pgd = (float(v) for v in re.search(r"natural ([\d.]+)%, PGD-20 ([\d.]+)%", got[1]).groups())
    assert 25 <= saved <= 50 and nat > 95 and pgd > 40, got


# ============================================================================ help
def _subparsers():
    p = _parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", ["train", "eval", "plot", "compare", "audit-labels", "detect"])
def test_every_option_has_help_in_its_own_words(command):
    parser = _subparsers()[command]
    for action in parser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest}: no help text"
    text = parser.format_help()
    assert "(default: None)" not in text and ") (default" not in text


def test_train_help_lists_datasets_models_and_their_defaults():
    text = _subparsers()["train"].format_help()
    for word in ("digits", "cifar10", "mnist", "small_cnn", "preact_resnet18", "wrn-34-10",
                 "gair-fat", "per-dataset defaults", "3.2 of its"):
        assert word in text
    row = next(line for line in text.splitlines() if line.split()[:1] == ["digits"])
    assert row.split()[1:4] == ["small_cnn", "0.2", "0.05"]


@pytest.mark.parametrize("command", ["eval", "audit-labels", "detect"])
def test_commands_on_a_checkpoint_list_the_datasets(command):
    action = next(a for a in _subparsers()[command]._actions if "--dataset" in a.option_strings)
    assert all(name in action.help for name in ("cifar10", "mnist", "digits", "svhn"))


# ============================================================================ errors and refusals
@pytest.mark.parametrize("argv,needle", [
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/d", "--no-download"], "--data-dir"),
    (["train", "--eps", "2"], "--eps: 2 is larger than the whole [0, 1] pixel range; did you mean 2/255"),
    (["train", "--alpha", "5"], "--alpha: 5 is larger"),
    (["train", "--preset", "paper"], "--preset: 'paper' is the papers' CIFAR-10 recipe"),
    (["train", "--device", "gpu"], "--device: unknown device 'gpu'; use cpu, cuda or cuda:N"),
    (["train", "--dataset", "cifar"], "unknown dataset 'cifar' (did you mean 'cifar10'?)"),
    (["train", "--model", "resnet"], "--model: unknown model 'resnet' (did you mean 'resnet18'?)"),
    (["train", "--method", "fatt"], "--method: unknown method 'fatt' (did you mean 'fat'?)"),
])
def test_refusals_speak_the_command_lines_language(argv, needle, capsys, tmp_path):
    assert main(argv + ["--out-dir", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys)
    assert needle in err and "data_dir=" not in err and "dict(" not in err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("newcomer") / "run"
    assert main(["train", "--method", "at", *TINY, "--epochs", "1", "--out-dir", str(run)]) == 0
    return run / "last.pt"


@pytest.mark.parametrize("command,argv,needle", [
    ("eval", ["--eps", "2"], "--eps: 2 is larger than the whole [0, 1] pixel range; did you mean"),
    ("eval", ["--alpha", "5"], "--alpha: 5 is larger"),
    ("eval", ["--pgd-plus-alpha", "3"], "--pgd-plus-alpha: 3 is larger"),
    ("eval", ["--dataset", "cifar"], "--dataset: unknown dataset 'cifar' (did you mean 'cifar10'?)"),
    ("eval", ["--device", "gpu"], "--device: unknown device 'gpu'; use cpu, cuda or cuda:N"),
    ("audit-labels", ["--eps", "8"], "--eps: 8 is larger"),
    ("audit-labels", ["--dataset", "mnsit"], "unknown dataset 'mnsit' (did you mean 'mnist'?)"),
    ("detect", ["--eps", "8"], "--eps: 8 is larger"),
    ("detect", ["--dataset", "svnh"], "unknown dataset 'svnh' (did you mean 'svhn'?)"),
    ("detect", ["--attack", "pgdd"], "--attack: unknown attack 'pgdd'"),
])
def test_the_other_commands_refuse_alike(command, argv, needle, digits_run, capsys):
    """eval, audit-labels and detect refuse what train refuses, in the command line's names."""
    capsys.readouterr()
    assert main([command, str(digits_run), *argv]) == 2
    err = _one_line_error(capsys, command)
    assert needle in err and "name:" not in err


def test_evaluate_checks_eps_only_for_its_own_linf_attacks():
    """eps > 1 is a slip for /255 where evaluate's named L-inf attacks use it; natural and attack
    objects (an L2 attack with eps 2, say) do not use it."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with pytest.raises(ValueError, match="eps: 2 is larger than the whole"):
        fastadv.evaluate(model, (x, y), attacks=("natural", "pgd3"), eps=2, verbose=False)
    l2 = fastadv.attacks.PGD(model, norm="l2", eps=2.0, alpha=0.5, steps=2)
    res = fastadv.evaluate(model, (x, y), attacks=("natural", l2), eps=2.0, verbose=False)
    assert set(res["accuracy"]) == {"natural", "PGD"}


def test_bad_augment_names_the_cli_values(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--augment", "padding=4"])
    err = capsys.readouterr().err
    assert "use default, none, crop-flip, crop or flip" in err and "dict(" not in err


def test_cli_names_translation():
    assert cli_names("out_dir: x; pass resume=True or verify_data=False, eps=0.1, `epochs` and "
                     "the model's data_dir") == (
        "--out-dir: x; pass --resume or --no-verify-data, --eps 0.1, --epochs and the model's "
        "--data-dir")


def test_method_case_is_one_rule(tmp_path):
    r = fastadv.train("FAT", dataset="digits", epochs=1, train_samples=64, eval_samples=16,
                      out_dir=False, verbose=False)
    assert r.config.method == "fat"
    assert main(["train", "--method", "FAT", *TINY, "--epochs", "1", "--out-dir",
                 str(tmp_path / "run")]) == 0


def _write_idx(path, array):
    """An uncompressed MNIST idx file of uint8 ``array``."""
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_eval_refuses_data_of_another_shape(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "at", *TINY, "--epochs", "1", "--out-dir", str(run)]) == 0
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(mnist / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(mnist / "t10k-labels-idx1-ubyte", rng.integers(0, 10, (20,)))
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), "--dataset", "mnist", "--data-dir",
                 str(tmp_path / "data"), "--no-download"]) == 2
    err = _one_line_error(capsys, "eval")
    assert "mnist has 1×28×28 images but the model was trained on digits (1×8×8)" in err


# ============================================================================ results at a glance
def test_table_legend_eval_time_and_the_at_reference(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "at", *TINY, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "tr-adv%: accuracy on the training batches" in out and "not PGD-20" in out
    header = next(line for line in out.splitlines() if line.split()[:2] == ["epoch", "lr"])
    assert "eval-s" in header.split()
    assert main(["train", "--method", "fat", *TINY, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"time: [\d.]+ s training \+ [\d.]+ s evaluation; the AT run with the same "
                  r"settings in runs/digits-at-s0 trained in [\d.]+ s: this run took [\d.]+x its "
                  r"time", out)
    assert m, out
    other = "2" if torch.get_num_threads() == 1 else "1"  # times on other threads: no reference
    assert main(["train", "--method", "fat", *TINY, "--epochs", "2", "--threads", other,
                 "--overwrite"]) == 0
    assert "the AT run with the same settings" not in capsys.readouterr().out


def test_compare_runs_table_and_figure(tmp_path, capsys):
    runs = []
    for method in ("at", "fat"):
        runs.append(tmp_path / method)
        assert main(["train", "--method", method, *TINY, "--epochs", "2", "--out-dir",
                     str(runs[-1])]) == 0
    capsys.readouterr()
    png = tmp_path / "cmp.png"
    assert main(["compare", *map(str, runs), "--out", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["run", "method"] and "PGD-20" in lines[0]
    at_row, fat_row = lines[1].split(), lines[2].split()
    assert at_row[:2] == ["at", "at"] and fat_row[:3] == ["fat", "fat", "τ=1"]
    assert at_row[-1] == "1.00x"
    hist = {m: json.loads((tmp_path / m / "history.json").read_text()) for m in ("at", "fat")}
    assert float(at_row[6]) == pytest.approx(sum(r["bp_avg"] for r in hist["at"]), abs=0.01)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_marks_best_epoch_and_lr_drops(tmp_path):
    from fastadv import reports
    run = tmp_path / "run"
    assert main(["train", "--method", "fat", *TINY, "--epochs", "4", "--out-dir", str(run)]) == 0
    r = reports.read_run(str(run))
    assert reports._lr_drops(r) == [3, 4]  # piecewise: ×0.1 at 50 %, ×0.01 at 75 % of 4 epochs
    assert r.label == "fat τ=1" and r.best_pgd20 == max(x["test_pgd20_acc"] for x in r.history)
    import matplotlib.figure
    figures, save = [], matplotlib.figure.Figure.savefig

    def keep(fig, *a, **k):  # the figure as it is written
        figures.append(fig)
        fig.canvas.draw()
        return save(fig, *a, **k)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.figure.Figure, "savefig", keep)
        png = reports.plot_run(str(run))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acc, bps = figures[0].axes
    labels = {line.get_label(): line for line in acc.get_lines()}
    best_epoch = 1 + [x["test_pgd20_acc"] for x in r.history].index(r.best_pgd20)
    star = labels[f"best PGD-20: {r.best_pgd20:.2f}% (epoch {best_epoch})"]
    assert list(star.get_xdata()) == [best_epoch] and star.get_marker() == "*"
    assert "train, on the method's own adversarial examples" in labels  # not "train adversarial"
    for ax in (acc, bps):
        drops = sorted(line.get_xdata()[0] for line in ax.get_lines()
                       if line.get_linestyle() == ":" and list(line.get_xdata()) == [line.get_xdata()[0]] * 2)
        assert drops == [3, 4]  # a vertical line at each lr drop, on both panels
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)  # whole epochs only


def test_evaluation_has_a_progress_bar(capsys):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))
    fastadv.evaluate(model, (x, y), attacks=("natural", "pgd3"), eps=0.1, batch_size=16,
                     verbose=False, progress=True)
    err = capsys.readouterr().err
    assert "evaluating (natural, pgd3)" in err and "0/3" in err


def test_none_and_all_survive_the_command_line(tmp_path):
    from fastadv.training.config import resolve_config
    args = _subparsers()["train"].parse_args(["--augment", "none", "--eval-samples", "all"])
    assert args.augment is False and args.eval_samples == "all"  # typed: not dropped as None
    cfg = resolve_config("fat", dataset="cifar10", augment=False, eval_samples="all")
    assert cfg.augment is False and cfg.eval_samples is None  # every test image
    assert resolve_config("fat", dataset="cifar10").eval_samples == 1000


def test_cli_names_leave_paths_alone():
    assert cli_names("/home/me/data_dir/x: bad; pass data_dir=/y") == \
        "/home/me/data_dir/x: bad; pass --data-dir /y"


def test_plot_without_matplotlib_is_one_line(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["plot", str(tmp_path)]) == 2
    assert "plots need matplotlib: pip install matplotlib" in _one_line_error(capsys, "plot")
