"""The set-up of ``make demo`` and ``make test``: install and build only what is missing or stale.

    python scripts/setup_env.py demo|test [--dry-run]

- **torch**: an installed torch (CPU or CUDA build) is kept; otherwise ``$TORCH_SPEC``
  (default ``torch==2.13.0``) is installed.
- **fastadv**: ``pip install --no-build-isolation --no-deps -e .`` builds the C++ (and, with a CUDA
  torch and toolkit, CUDA) extension against that torch. It runs again only when its stamp
  (``build/setup-stamp.json``: this Python, torch's version, the hash of csrc/ and of the build
  flags, setup.py and pyproject.toml) differs, or the extension file is gone.
- **What each command needs**, and nothing more: the demo needs scikit-learn (the bundled digits);
  the tests need the ``test`` extras of pyproject.toml (pytest, pytest-benchmark, scikit-learn,
  matplotlib, pillow, triton, about 1 GB with triton) and torchattacks 3.5.1, the benchmarks'
  baseline (``--no-deps``: its torchvision requirement would pull in a torch of its own choosing).

A second run with nothing changed does no pip call at all and says so in one line.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
STAMP = ROOT / "build" / "setup-stamp.json"
# pip name -> the module it provides (what we check for). Keep in step with pyproject.toml: a test
# (tests/test_newcomer.py) compares these lists with its dependencies and extras.
BASE = {"numpy": "numpy", "tqdm": "tqdm", "ninja": "ninja", "pybind11": "pybind11",
        "setuptools": "setuptools", "wheel": "wheel"}
NEEDS = {
    "demo": {"scikit-learn": "sklearn"},
    "test": {"pytest": "pytest", "pytest-benchmark": "pytest_benchmark", "scikit-learn": "sklearn",
             "matplotlib": "matplotlib", "pillow": "PIL", "triton": "triton"},
}
TORCHATTACKS = "torchattacks==3.5.1"


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _load_build_module():
    spec = importlib.util.spec_from_file_location("fastadv_build", ROOT / "fastadv" / "_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_key() -> Dict[str, str]:
    """What the built extension depends on; a change of any value means a rebuild."""
    project = hashlib.sha256()
    for name in ("setup.py", "pyproject.toml", "fastadv/_build.py"):
        project.update((ROOT / name).read_bytes())
    return {"python": sys.executable, "torch": md.version("torch"),
            "sources": _load_build_module().source_hash(ROOT / "csrc"),
            "project": project.hexdigest()[:16]}


def _extension_present() -> bool:
    return any((ROOT / "fastadv").glob("_C.*.so")) or any((ROOT / "fastadv").glob("_C.*.pyd"))


def _fastadv_installed() -> bool:
    try:
        md.distribution("fastadv")
    except md.PackageNotFoundError:
        return False
    spec = importlib.util.find_spec("fastadv")
    return spec is not None and spec.origin is not None and \
        Path(spec.origin).resolve().parent == ROOT / "fastadv"


def plan(kind: str) -> List[List[str]]:
    """The pip commands (argument lists after ``python -m pip``) that ``kind`` still needs."""
    steps: List[List[str]] = []
    if not _have("torch"):
        steps.append(["install", os.environ.get("TORCH_SPEC", "torch==2.13.0")])
    missing = [pip for pip, mod in BASE.items() if not _have(mod)]
    if missing:
        steps.append(["install", *missing])
    torch_will_change = any(s[1].startswith("torch") for s in steps)
    stale = (torch_will_change or not _fastadv_installed() or not _extension_present()
             or _read_stamp() != build_key())
    if stale:
        steps.append(["install", "--no-build-isolation", "--no-deps", "-e", str(ROOT)])
    extras = [pip for pip, mod in NEEDS[kind].items() if not _have(mod)]
    if extras:
        steps.append(["install", *extras])
    if kind == "test":
        try:
            ok = md.version("torchattacks") == TORCHATTACKS.split("==")[1]
        except md.PackageNotFoundError:
            ok = False
        if not ok:
            steps.append(["install", "--no-deps", TORCHATTACKS])
    return steps


def _read_stamp():
    try:
        return json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=sorted(NEEDS))
    p.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
    args = p.parse_args(argv)
    steps = plan(args.kind)
    if not steps:
        print(f"setup ({args.kind}): everything is installed and built for torch "
              f"{md.version('torch')}; nothing to do")
        return 0
    for step in steps:
        cmd = [sys.executable, "-m", "pip", step[0], "-q", *step[1:]]
        print("setup:", " ".join(step), flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    if not args.dry_run and any("-e" in s for s in steps):
        STAMP.parent.mkdir(exist_ok=True)
        STAMP.write_text(json.dumps(build_key()))  # after the build: a failed one is retried
    return 0


if __name__ == "__main__":
    sys.exit(main())
