"""A real crash: ``python -m fastadv train`` killed with SIGKILL mid-run, then resumed with
``--resume``, ends with the same history (timings aside) and weights as an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--method", "fat", "--tau", "1", "--dataset", "digits", "--train-samples", "384",
        "--eval-samples", "64", "--epochs", "4", "--no-progress", "--no-verbose"]
TIMING_KEYS = {"seconds", "images_per_sec", "eval_seconds"}


def _cmd(out_dir, *extra):
    return [sys.executable, "-m", "fastadv", "train", *ARGS, "--out-dir", str(out_dir), *extra]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _history(path):
    ck = torch.load(path, weights_only=True)
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in ck["history"]], ck["model"]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(_cmd(ref), check=True, env=_env(), timeout=300)

    proc = subprocess.Popen(_cmd(cut), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    last = cut / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the checkpoint must be whole
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    killed_after = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= killed_after < 4  # killed before the end of the run

    subprocess.run(_cmd(cut, "--resume"), check=True, env=_env(), timeout=300)
    ref_hist, ref_model = _history(ref / "last.pt")
    cut_hist, cut_model = _history(last)
    assert len(cut_hist) == 4
    assert cut_hist == ref_hist
    assert all(torch.equal(ref_model[k], cut_model[k]) for k in ref_model)
    assert not list(cut.glob("*.tmp"))  # atomic writes leave no temporaries behind
