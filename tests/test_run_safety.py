"""Issue #9: runs that never lose work and never run a stranger's code.

Each test reproduces what a careless or hostile user did: a checkpoint that points ``eval`` at a
planted pickle, the same command run twice, two runs in one folder, a resume with other options, a
full disk, another thread count, broken files, truthy strings, and bad data or models."""
import errno
import hashlib
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fastadv
from fastadv import attacks
from fastadv.cli import main
from fastadv.errors import CheckpointError, NonFiniteLossError, RunFolderError, UserError
from fastadv.training import checkpoint as ckpt_mod
from fastadv.training.run_folder import LOCK_FILE, RunFolder, atomic_write

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--train-samples", "128", "--eval-samples", "32", "--no-progress"]


def _train(out, *extra, epochs=1, method="fat"):
    return main(["train", "--method", method, *TINY, "--epochs", str(epochs), "--out-dir", str(out),
                 *extra])


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_line_error(capsys, command="train"):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fastadv {command}: error:") and "\n" not in err, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch FAT run on digits (never modified by the tests that use it)."""
    out = tmp_path_factory.mktemp("runs") / "fat"
    assert _train(out, epochs=2) == 0
    return out


# ============================================================================ 1. security
class _RunsShell:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_eval_never_reads_data_from_a_path_named_in_the_checkpoint(finished_run, tmp_path,
                                                                   monkeypatch, capsys):
    planted, marker = tmp_path / "planted", tmp_path / "pwned"
    (planted / "cifar-10-batches-py").mkdir(parents=True)
    with open(planted / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _RunsShell(f"touch {marker}"), b"labels": [0]}, f, protocol=2)
    state = torch.load(finished_run / "last.pt", weights_only=True)
    state["config"]["data_dir"] = str(planted)  # loads fine with weights_only=True
    state["meta"]["dataset"] = "cifar10"
    hostile = tmp_path / "hostile.pt"
    torch.save(state, hostile)
    empty = tmp_path / "my-data"
    empty.mkdir()
    monkeypatch.setenv("FASTADV_DATA", str(empty))
    for command in ("eval", "audit-labels", "detect"):  # every command that loads a run's data
        assert main([command, str(hostile), "--no-download"]) == 2
        err = _one_line_error(capsys, command)
        assert str(empty) in err and str(planted) not in err  # the user's folder, not the planted
    # Even pointed at it by the user, with the checksums off, the pickle runs nothing.
    assert main(["eval", str(hostile), "--data-dir", str(planted), "--no-verify-data"]) == 2
    assert "refusing to load posix.system" in _one_line_error(capsys, "eval")
    assert main(["eval", str(hostile), "--data-dir", str(planted)]) == 2
    assert "not the official cifar10 file" in _one_line_error(capsys, "eval")
    assert not marker.exists()


# ============================================================================ 2. nothing replaced
def test_rerunning_the_same_command_refuses_and_keeps_the_run(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, epochs=2) == 0
    before = {n: _digest(run / n) for n in ("best.pt", "last.pt", "history.json")}
    capsys.readouterr()
    assert _train(run, epochs=2) == 2  # the same command again
    err = _one_line_error(capsys)
    assert "holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {n: _digest(run / n) for n in before} == before


def test_overwrite_replaces_the_whole_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, epochs=2) == 0
    assert (run / "best.pt").exists()
    (run / "eval_best.json").write_text("{}")  # what eval and plot wrote about the old run
    (run / "curves.png").write_bytes(b"png")
    (run / "my_notes.txt").write_text("mine")  # not fastadv's: kept
    before = _digest(run / "best.pt")
    # An --overwrite that fails before training (here: the data) must not have cost the old run.
    assert main(["train", "--method", "fat", "--dataset", "mnist", "--data-dir",
                 str(tmp_path / "nowhere"), "--no-download", "--out-dir", str(run),
                 "--overwrite"]) == 2
    # ... nor one refused by the trainer's own checks (sync_bn needs a distributed CUDA run).
    assert _train(run, "--overwrite", "--sync-bn") == 2
    capsys.readouterr()
    assert _digest(run / "best.pt") == before and (run / "eval_best.json").exists()
    # The new run evaluates never, so it writes no best.pt: the old one must not survive beside it.
    assert _train(run, "--overwrite", "--eval-every", "0", "--seed", "1") == 0
    assert sorted(p.name for p in run.iterdir() if p.name != LOCK_FILE) == [
        "history.csv", "history.json", "last.pt", "my_notes.txt"]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["config"]["seed"] == 1
    assert main(["train", *TINY, "--out-dir", str(run), "--resume", "--overwrite"]) == 2
    assert "contradict" in _one_line_error(capsys)


def test_default_run_folder_is_refused_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--epochs", "1"]) == 0
    assert (tmp_path / "runs" / "digits-fat-tau1-s0" / "last.pt").exists()
    assert main(["train", *TINY, "--epochs", "1"]) == 2
    assert "runs/digits-fat-tau1-s0 holds a run" in _one_line_error(capsys)


def test_trainer_fit_refuses_a_folder_with_another_run(finished_run, tmp_path):
    model = fastadv.models.create("small_cnn", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = fastadv.Trainer(model, opt, "at", eps=0.2, alpha=0.05, steps=2)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes((finished_run / "last.pt").read_bytes())
    with pytest.raises(RunFolderError, match="holds a run.*load_checkpoint"):
        trainer.fit([(x, y)], None, 1, out_dir=str(run))
    trainer.fit([(x, y)], None, 1, out_dir=str(run), overwrite=True)
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1


def test_trainer_fit_refuses_a_third_folder_after_loading_a_run(finished_run, tmp_path):
    """A trainer at epoch 2 of one run (loaded from its folder) must not write into a folder that
    holds another run: only the folder it continues, or a fresh one."""
    model = fastadv.models.create("small_cnn", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = fastadv.Trainer(model, opt, "fat", eps=0.2, alpha=0.05, steps=2, tau=1)
    mine, other = tmp_path / "mine", tmp_path / "other"
    for d in (mine, other):
        d.mkdir()
        (d / "last.pt").write_bytes((finished_run / "last.pt").read_bytes())
    trainer.load_checkpoint(str(mine / "last.pt"))
    assert trainer.epoch == 2
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    before = _digest(other / "last.pt")
    with pytest.raises(RunFolderError, match="holds a run .* that this trainer does not continue"):
        trainer.fit([(x, y)], None, 3, out_dir=str(other))
    assert _digest(other / "last.pt") == before
    trainer.fit([(x, y)], None, 3, out_dir=str(mine))  # the run it continues
    assert torch.load(mine / "last.pt", weights_only=True)["epoch"] == 3
    trainer.fit([(x, y)], None, 4, out_dir=str(mine))  # and again after its own fit
    trainer.fit([(x, y)], None, 5, out_dir=str(tmp_path / "fresh"))  # an empty folder is fine
    # Loading another run as a dict (no path) forgets the folder it continued: fit into "mine"
    # would put that run's continuation over mine.
    before = _digest(mine / "last.pt")
    trainer.load_checkpoint(torch.load(other / "last.pt", weights_only=True))
    with pytest.raises(RunFolderError, match="a loaded dict: pass source="):
        trainer.fit([(x, y)], None, 3, out_dir=str(mine))
    assert _digest(mine / "last.pt") == before
    trainer.load_checkpoint(torch.load(other / "last.pt", weights_only=True),
                            source=str(other / "last.pt"))
    trainer.fit([(x, y)], None, 3, out_dir=str(other))  # named with source=: it continues


def test_trainer_fit_checks_free_space_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    trainer = fastadv.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "standard")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    calls = []
    monkeypatch.setattr(trainer, "train_epoch", lambda *a, **k: calls.append(a))
    with pytest.raises(RunFolderError, match="only 0.0 MB free"):
        trainer.fit([(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))], None, 1,
                    out_dir=str(tmp_path / "run"))
    assert calls == []  # refused before the first epoch


# ============================================================================ 3. one run per folder
def test_a_second_run_in_a_locked_folder_refuses(tmp_path, capsys):
    run = tmp_path / "run"
    with RunFolder(run):  # another run holds the folder
        assert _train(run) == 2
        err = _one_line_error(capsys)
        assert "in use by another run" in err and f"pid {os.getpid()}" in err
        assert not (run / "last.pt").exists()
    assert _train(run) == 0  # released: the folder is usable again


def test_two_processes_one_folder(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "fastadv", "train", *TINY, "--epochs", "6", "--out-dir", str(run),
           "--no-verbose"]
    first = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / LOCK_FILE).exists() or not (run / LOCK_FILE).read_text():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True, timeout=120)
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    assert second.returncode == 2
    assert "in use by another run" in second.stderr and "Traceback" not in second.stderr
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 6 and len(state["history"]) == 6


def test_atomic_writes_use_unique_temporaries(tmp_path):
    target = tmp_path / "last.pt"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    seen, errors = set(), []

    def write(data):
        def w(f):
            seen.add(os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}")))
            f.write(data)
        try:
            atomic_write(str(target), w)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(seen) == 8  # eight writers, eight temporary names
    assert target.read_bytes() in payloads  # one writer's whole file, never a mixture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_stale_temporaries_are_removed_when_the_lock_is_taken(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt.tmp", "best.pt.k2j_3x.tmp", "history.json.a1.tmp", "notes.tmp"):
        (run / name).write_bytes(b"partial")
    with RunFolder(run) as folder:
        assert sorted(p.name for p in run.iterdir() if p.name != LOCK_FILE) == ["notes.tmp"]
        assert folder.locked


# ============================================================================ 4. resume's options
def test_resume_refuses_changed_options_and_lists_them(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--seed", "3", epochs=2) == 0
    before = _digest(run / "last.pt")
    capsys.readouterr()
    assert _train(run, "--resume", "--tau", "3", "--eps", "0.05", "--batch-size", "64", epochs=2) == 2
    err = _one_line_error(capsys)
    for part in ("--tau 3 (the run: 1)", "--eps 0.05 (the run: 0.2)", "--batch-size 64 (the run: 128)"):
        assert part in err
    assert "seed" not in err.split("differ")[0]  # not typed: taken from the run, not compared
    assert _digest(run / "last.pt") == before
    assert _train(run, "--resume", "--seed", "7", epochs=2) == 2
    assert "--seed 7 (the run: 3)" in _one_line_error(capsys)
    assert _train(run, "--resume", epochs=1) == 2
    assert "has done 2 epochs" in _one_line_error(capsys)
    # Extending is allowed; untyped options (seed 3) come from the run.
    assert _train(run, "--resume", epochs=3) == 0
    out = capsys.readouterr().out
    assert "now ends after 3 epochs instead of 2" in out
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["config"]["seed"] == 3 and state["config"]["epochs"] == 3
    assert state["meta"]["eps"] == 0.2


def test_resume_of_an_older_run_refuses_options_it_did_not_have(finished_run, tmp_path, capsys):
    """A run saved before an option existed (its config lacks it) ran with its default: turning
    the option on at resume (here per-epoch AutoAttack) would mix epochs with and without it."""
    run = tmp_path / "run"
    run.mkdir()
    state = torch.load(finished_run / "last.pt", weights_only=True)
    del state["config"]["eval_autoattack"]
    torch.save(state, run / "last.pt")
    assert _train(run, "--resume", "--eval-autoattack", "lite", epochs=3) == 2
    err = _one_line_error(capsys)
    assert "--eval-autoattack" in err and "'lite' (the run: None)" in err
    assert _train(run, "--resume", epochs=3) == 0  # without it, the run continues


def test_resume_in_python_takes_the_runs_options(tmp_path):
    run = tmp_path / "run"
    common = dict(dataset="digits", train_samples=128, eval_samples=32, verbose=False,
                  out_dir=str(run))
    fastadv.train("fat", tau=2, epochs=1, seed=5, **common)
    with pytest.raises(UserError, match=r"tau=1 \(the run: 2\)"):
        fastadv.train("fat", tau=1, epochs=2, resume=True, **common)
    r = fastadv.train("fat", epochs=2, resume=True, **common)
    assert (r.config.tau, r.config.seed, len(r.history)) == (2, 5, 2)
    with pytest.raises(RunFolderError, match="is a 'fat' run, not 'at'"):
        fastadv.train("at", epochs=3, resume=True, **common)


# ============================================================================ 5. disk trouble
def test_bad_out_dirs_fail_before_any_work(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    t0 = time.perf_counter()
    assert _train(a_file) == 2
    assert "exists and is not a folder" in _one_line_error(capsys)
    assert _train(a_file / "sub") == 2
    assert "cannot write in" in _one_line_error(capsys)

    def read_only(*a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr("fastadv.training.run_folder.tempfile.mkstemp", read_only)
    assert _train(tmp_path / "ro") == 2
    assert "cannot write in" in _one_line_error(capsys)
    assert time.perf_counter() - t0 < 20  # no epoch was trained first


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    assert _train(tmp_path / "run") == 2
    assert "only 0.0 MB free" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()  # made for this run, nothing written: removed again


def test_full_disk_stops_in_one_line_and_keeps_last_pt(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    kept = _digest(run / "last.pt")
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    capsys.readouterr()
    assert _train(run, "--resume", epochs=2) == 2
    err = _one_line_error(capsys)
    assert "No space left on device" in err and "last.pt still holds epoch 1" in err
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [LOCK_FILE, "best.pt", "history.csv", "history.json", "last.pt"])  # no partial files
    assert _digest(run / "last.pt") == kept
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert _train(run, "--resume", epochs=2) == 0  # the next resume is not blocked
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_a_real_write_failure_in_a_subprocess(tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE: EFBIG, as a full disk would ENOSPC)."""
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "fastadv", "train", *TINY, "--out-dir", str(run), "--no-verbose"]
    subprocess.run(base + ["--epochs", "1"], env=env, check=True, timeout=300)
    kept = _digest(run / "last.pt")
    limit = (run / "last.pt").stat().st_size // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    r = subprocess.run(base + ["--epochs", "2", "--resume"], env=env, preexec_fn=small_files,
                       stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "still holds epoch 1" in lines[0]
    assert _digest(run / "last.pt") == kept and not list(run.glob("*.tmp"))


# ============================================================================ 6. threads
def test_thread_count_is_stored_and_a_resume_says_when_it_differs(tmp_path, capsys):
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    assert _train(run, "--threads", "1") == 0
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["runtime"]["threads"] == 1 and state["runtime"]["device"] == "cpu"
    capsys.readouterr()
    assert _train(run, "--resume", "--threads", "2", epochs=2) == 0
    out = capsys.readouterr().out
    assert "written with 1 CPU threads and this process uses 2" in out and "--threads 1" in out
    assert torch.load(run / "last.pt", weights_only=True)["runtime"]["threads"] == 2


def test_another_gpu_index_of_the_same_kind_is_not_a_difference(monkeypatch):
    """Rank r of a distributed resume runs on cuda:r; the checkpoint says cuda:0 (rank 0's)."""
    now = {"threads": 4, "device": "cuda:1", "device_name": "NVIDIA H200", "torch": "2.11.0"}
    monkeypatch.setattr(ckpt_mod, "runtime_info", lambda device=None: dict(now))
    state = {"runtime": dict(now, device="cuda:0")}
    assert ckpt_mod.runtime_notes(state) == []
    state = {"runtime": dict(now, device="cpu", device_name=None)}
    assert [n.split(" and ")[0] for n in ckpt_mod.runtime_notes(state)] == [
        "the checkpoint was written on device cpu"]
    state = {"runtime": dict(now, device_name="NVIDIA A100", threads=2)}
    assert len(ckpt_mod.runtime_notes(state)) == 2


def test_a_quiet_resume_on_other_threads_still_warns(tmp_path, capsys):
    """--no-verbose (or verbose=False, or a Trainer of one's own) must not make the note silent."""
    run = tmp_path / "run"
    assert _train(run, "--threads", "1") == 0
    with pytest.warns(ckpt_mod.NotBitExactWarning, match="written with 1 CPU threads .* uses 2"):
        assert _train(run, "--resume", "--threads", "2", "--no-verbose", epochs=2) == 0
    assert "written with" not in capsys.readouterr().out  # quiet: a warning, not a print
    model = fastadv.models.create("small_cnn", num_classes=10, in_channels=1)
    trainer = fastadv.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                              "fat", eps=0.2, alpha=0.05, steps=2, tau=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the checkpoint above was written with 2
        with pytest.warns(ckpt_mod.NotBitExactWarning, match="written with 2 CPU threads"):
            trainer.load_checkpoint(str(run / "last.pt"))
        assert len(trainer.not_exact_notes) == 1
        torch.set_num_threads(2)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error", ckpt_mod.NotBitExactWarning)
            trainer.load_checkpoint(str(run / "last.pt"))  # the same threads: no warning
        assert trainer.not_exact_notes == []
    finally:
        torch.set_num_threads(threads)


# ============================================================================ 7. one line each
def test_broken_checkpoints_are_one_line_errors(finished_run, tmp_path, capsys):
    good = (finished_run / "last.pt").read_bytes()
    cases = {"empty.pt": b"", "truncated.pt": good[:len(good) // 2], "notes.pt": b"my notes\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    for name in [*cases, "tensor.pt"]:
        assert main(["eval", str(tmp_path / name)]) == 2
        err = _one_line_error(capsys, "eval")
        assert name in err and ("cannot be read" in err or "not a fastadv checkpoint" in err)
    state = torch.load(finished_run / "last.pt", weights_only=True)
    state["meta"]["model"] = "preact_resnet18"  # weights of a small_cnn under another name
    torch.save(state, tmp_path / "other.pt")
    assert main(["eval", str(tmp_path / "other.pt")]) == 2
    err = _one_line_error(capsys, "eval")
    assert "another architecture" in err and "missing" in err and "unexpected" in err
    with pytest.raises(CheckpointError):  # --debug: the traceback instead
        main(["eval", str(tmp_path / "other.pt"), "--debug"])


def test_resume_from_a_damaged_last_pt_is_one_line(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes((finished_run / "last.pt").read_bytes()[:1000])
    assert _train(run, "--resume", epochs=3) == 2
    assert "last.pt cannot be read" in _one_line_error(capsys)


@pytest.mark.parametrize("error", [KeyError("a bug"), ValueError("a bug inside torch"),
                                   TypeError("f() takes 2 positional arguments but 3 were given"),
                                   OSError("an OSError with no file and no user errno")])
def test_bugs_keep_their_traceback(monkeypatch, tmp_path, error):
    """Only fastadv's own checks (UserError) and the OSError of a file are one-line errors; a
    plain ValueError or TypeError is a bug in fastadv or torch, and keeps its traceback."""
    def bug(*a, **k):
        raise error
    monkeypatch.setattr("fastadv.training.api._train", bug)
    with pytest.raises(type(error)):
        main(["train", *TINY, "--epochs", "1", "--out-dir", str(tmp_path / "x")])


def test_damaged_user_files_are_one_line_errors(finished_run, tmp_path, capsys):
    """Files the user hands over, damaged: one line naming the file, never a traceback."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text('[{"epoch": 1, "test_pgd2')  # copied half-way
    assert main(["plot", str(run)]) == 2
    assert "history.json is not a readable history" in _one_line_error(capsys, "plot")
    assert main(["compare", str(finished_run), str(run)]) == 2
    assert "history.json is not a readable history" in _one_line_error(capsys, "compare")
    bad = tmp_path / "extra.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert _train(tmp_path / "gair", "--extra-data", str(bad), method="gair-rst") == 2
    assert "extra.npz cannot be read as a .npz file" in _one_line_error(capsys)
    from fastadv.data import formats
    gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
    import gzip
    gz.write_bytes(gzip.compress(b"\0\0\x08\x01" + bytes(100))[:-6])  # truncated
    with pytest.raises(UserError, match="a damaged gzip file"):
        formats.read_idx(str(gz))


def test_the_rule_between_user_errors_and_bugs():
    from fastadv.errors import UserTypeError, is_user_error
    assert is_user_error(UserError("eps: ...")) and is_user_error(UserTypeError("resume: ..."))
    assert isinstance(UserTypeError("x"), TypeError)  # callers that catch TypeError still do
    assert is_user_error(FileNotFoundError(errno.ENOENT, "No such file", "x.pt"))
    assert is_user_error(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_user_error(ValueError("x")) and not is_user_error(TypeError("x"))
    assert not is_user_error(OSError(errno.EBADF, "Bad file descriptor"))
    assert not is_user_error(RuntimeError("x"))
    # every deliberate check in fastadv raises a UserError: none raises the bare built-ins
    import re
    bare = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "fastadv").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"raise (ValueError|TypeError)\(", line)]
    assert bare == [], bare


# ============================================================================ 8. API types
@pytest.mark.parametrize("option,value", [("resume", "no"), ("compile", "no"),
                                          ("channels_last", "false"), ("overwrite", 1),
                                          ("verbose", "yes"), ("progress", "auto")])
def test_booleans_are_type_checked(option, value):
    with pytest.raises(TypeError, match=f"{option}: must be True"):
        fastadv.train("fat", dataset="digits", out_dir=False, **{option: value})


@pytest.mark.parametrize("option", ["progress", "distributed"])
def test_trainer_tristate_flags_are_type_checked(option):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(TypeError, match=f"{option} must be True, False or None .* got 'no'"):
        fastadv.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "at", **{option: "no"})


def test_pointless_option_combinations_are_refused():
    with pytest.raises(ValueError, match="gair_start: 30 is not before the end of the 20 epochs"):
        fastadv.train("gairat", dataset="digits", epochs=20, gair_start=30, out_dir=False)
    with pytest.raises(ValueError, match="preset: 'paper' .* does not fit digits"):
        fastadv.train("fat", dataset="digits", preset="paper", out_dir=False)
    with pytest.raises(ValueError, match=r"eps: 2 is larger .* 2/255"):
        fastadv.train("fat", dataset="digits", eps=2, out_dir=False)
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="alpha: 5 is larger"):
        fastadv.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "at", alpha=5)
    with pytest.raises(TypeError, match="compile: must be True or False"):
        fastadv.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "at", compile="no")


# ============================================================================ 9. bad data and models
@pytest.fixture
def small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return model, torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))


def test_inputs_outside_the_box_raise(small):
    model, x, y = small
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\], got values in \[0\.\d+, 25\d\.\d+\].*divide them by 255"):
        attacks.PGD(model, eps=0.1, steps=2)(x * 255, y)
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="and NaN or inf"):
        attacks.EarlyStopPGD(model, eps=0.1, steps=2, tau=1)(bad, y)


def test_inputs_outside_the_box_raise_in_training_and_evaluation(small):
    model, x, y = small
    for method in ("at", "standard"):
        trainer = fastadv.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), method,
                                  eps=0.1, alpha=0.03, steps=2)
        with pytest.raises(ValueError, match=r"epoch 1, batch 2: x must lie in \[0, 1\]"):
            trainer.train_epoch([(x, y), (x * 255, y)])
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        fastadv.evaluate(model, (x * 255, y), attacks=("pgd5",), eps=0.1, verbose=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_model_with_float_inputs_names_both_dtypes(small, dtype):
    model, x, y = small
    half = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to(dtype)
    msg = rf"x is torch.float32 but the model's parameters are {dtype}"
    with pytest.raises(TypeError, match=msg):
        attacks.PGD(half, eps=0.1, steps=2)(x, y)
    with pytest.raises(TypeError, match=msg):
        fastadv.evaluate(half, (x, y), attacks=("natural",), eps=0.1, verbose=False)
    trainer = fastadv.Trainer(half, torch.optim.SGD(half.parameters(), lr=0.1), "standard")
    with pytest.raises(TypeError, match=msg):
        trainer.train_step(x, y)


def test_an_eps_beyond_float32_is_named(small):
    model, x, y = small
    with pytest.raises(ValueError, match="eps = 1e\\+300 does not fit torch.float32"):
        attacks.PGD(model, eps=1e300, steps=2)(x, y)


def test_an_empty_batch_is_skipped(small):
    model, x, y = small
    states = []
    for batches in ([(x[:8], y[:8]), (x[8:], y[8:])],
                    [(x[:8], y[:8]), (x[:0], y[:0]), (x[8:], y[8:])]):
        torch.manual_seed(1)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        m.load_state_dict(model.state_dict())
        trainer = fastadv.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9,
                                                     weight_decay=5e-4), "fat", eps=0.1,
                                  alpha=0.03, steps=3)
        row = trainer.train_epoch(batches)
        assert row["train_loss"] == row["train_loss"]  # not NaN
        states.append((row["train_loss"], [p.detach().clone() for p in m.parameters()]))
    assert states[0][0] == states[1][0]
    assert all(torch.equal(a, b) for a, b in zip(states[0][1], states[1][1]))


class _DivergesAfter(nn.Module):
    """A model whose logits turn NaN after ``after`` training forward passes (as a diverging lr
    makes them)."""
    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x):
        self.calls += self.training  # the training forwards (not the eval-mode accuracy one)
        out = self.inner(x)
        return out * float("nan") if self.calls > self.after else out


def test_a_non_finite_loss_stops_naming_epoch_and_batch(small, tmp_path):
    model, x, y = small
    diverging = _DivergesAfter(model, after=2)
    trainer = fastadv.Trainer(diverging, torch.optim.SGD(diverging.parameters(), lr=0.1),
                              "standard")
    trainer.fit([(x, y)], None, 1, out_dir=str(tmp_path / "run"))  # epoch 1: one good batch
    kept = _digest(tmp_path / "run" / "last.pt")
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 2: the training loss is nan"):
        trainer.fit([(x, y), (x, y)], None, 2, out_dir=str(tmp_path / "run"))  # good, then NaN
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())  # no NaN update
    assert _digest(tmp_path / "run" / "last.pt") == kept  # still epoch 1
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="epoch 1, batch 1: x must lie in .* NaN or inf"):
        fastadv.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                        "standard").train_epoch([(bad, y)])


def test_an_optimizer_of_another_model_is_refused(small):
    model, _, _ = small
    other = nn.Linear(64, 10)
    with pytest.raises(ValueError, match="optimizer: updates none of the model's 2 trainable"):
        fastadv.Trainer(model, torch.optim.SGD(other.parameters(), lr=0.1), "at")


def test_an_optimizer_that_misses_some_parameters_warns(small):
    """Built before the head was replaced: the new head would never train."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model[2] = nn.Linear(32, 10)
    with pytest.warns(UserWarning, match=r"does not update 2 of the model's .*2\.weight, 2\.bias"):
        fastadv.Trainer(model, opt, "at")
    frozen = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    frozen[1].bias.requires_grad_(False)  # frozen on purpose: not a mistake
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastadv.Trainer(frozen, torch.optim.SGD([frozen[1].weight], lr=0.1), "at")
        dsnet = fastadv.models.create("dsnet-3-4", in_channels=1)
        fastadv.Trainer(dsnet, torch.optim.SGD(fastadv.models.weight_parameters(dsnet), lr=0.1),
                        "at")  # DS-Net's α has its own optimizer: not "missed"


def test_loaders_of_dicts(small):
    model, x, y = small
    trainer = fastadv.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "at", eps=0.1,
                              alpha=0.03, steps=2)
    hist = trainer.fit([{"image": x, "label": y}], [{"x": x, "y": y}], 1)
    assert len(hist) == 1 and hist[0]["test_pgd20_acc"] is not None
    with pytest.raises(TypeError, match=r"batch: a dict needs .* got keys \['img', 'lbl'\]"):
        trainer.train_epoch([{"img": x, "lbl": y}])


# ============================================================================ review follow-ups
def test_run_files_get_the_umasks_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(str(tmp_path / "last.pt"), lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_a_checkpoint_without_an_epoch_is_refused(finished_run, tmp_path, capsys):
    state = torch.load(finished_run / "last.pt", weights_only=True)
    del state["epoch"]
    torch.save(state, tmp_path / "no-epoch.pt")
    with pytest.raises(CheckpointError, match="not a fastadv checkpoint"):
        ckpt_mod.load_checkpoint(str(tmp_path / "no-epoch.pt"))


def test_calling_ndarray_directly_is_refused(tmp_path):
    """numpy.ndarray called as a function would build an object array past the dtype check."""
    import numpy as np
    from fastadv.data import formats

    class Direct:
        def __reduce__(self):
            return (np.ndarray, ((2,), "O"))
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": Direct(), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match="not a dataset pickle"):
        formats.read_cifar_batch(str(tmp_path / "b"))


def test_resume_merges_the_runs_options_before_validating(tmp_path, monkeypatch):
    from fastadv.training import config
    common = dict(dataset="digits", train_samples=64, eval_samples=16, verbose=False,
                  out_dir=str(tmp_path / "run"))
    fastadv.train("gairat", epochs=3, gair_start=2, **common)
    # With the digits default of 2 epochs, gair_start=2 alone would be "beyond the epochs"; the
    # run's own 3 epochs apply first.
    monkeypatch.setitem(config.DATASET_DEFAULTS, "digits",
                        dict(config.DATASET_DEFAULTS["digits"], epochs=2))
    r = fastadv.train(gair_start=2, resume=True, **common)  # method: the run's
    assert (r.config.method, r.config.epochs, len(r.history)) == ("gairat", 3, 3)
    # Tuples and lists are the same lr schedule.
    run2 = dict(common, out_dir=str(tmp_path / "run2"))
    fastadv.train("at", epochs=1, lr_schedule={"milestones": [0.5], "factors": [0.1]}, **run2)
    r = fastadv.train("at", epochs=2, resume=True,
                      lr_schedule={"milestones": (0.5,), "factors": (0.1,)}, **run2)
    assert len(r.history) == 2
