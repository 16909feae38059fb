"""Fetch the real-data folder that about a dozen tests read (MNIST, CIFAR-10 and CIFAR-100 subsets,
Fashion-MNIST labels), from the public sources it was gathered from, every file checked.

    python scripts/fetch_test_data.py            # into <repo>/../shared/data, where the tests look
    python scripts/fetch_test_data.py DEST       # elsewhere; then export FASTADV_SHARED_DATA=DEST

About 23 MB: 32 files from GitHub at pinned commits (raw.githubusercontent.com, each checked against
its md5) and 80 sample PNGs from the foolbox 3.3.4 wheel on PyPI (fetched with ``pip download``;
their names and bytes checked against one digest). Files already present with the right md5 are
kept, so a second run downloads nothing. The layout is the one ``tests/shared_data.py`` reads:
``mnist/`` (the official t10k idx files and the training set as ConvNetJS PNG sprites),
``cifar10/convnetjs/`` (train 0..3999 and test 0..999, lossless), ``*/foolbox/`` (20 test images
of each dataset) and ``fashion-mnist/`` (the official label files).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]

# (repository, commit, folder) of each group of files, and the files: {path in DEST: md5}.
_MNIST_SPRITES = {  # karpathy/convnetjs's MNIST demo data (a pull-request commit, not on master)
    f"mnist/convnetjs/mnist_batch_{k}.png": md5 for k, md5 in enumerate((
        "7dd8dc002bf95f1c727449b33192f462", "f8686d26cb54f87c8742f57b1f880154",
        "79977784c74edfa9b02657320f771b8f", "fb3e7c6734671c99e1a4b6b0fab67aae",
        "ccacf40716329de219192b59c4d3149a", "d72fb37b3b06a0dbcd849c5ddc6e33a7",
        "10091d5f59866c60795790f975db8a98", "ba2c5793e6d0ef0bee511fc8daa4601c",
        "624713a3070e618439a968ef4764ba92", "643110c6904bd2c95bc557df36c478e6",
        "e72e1da93de2378dfbf5f9f2982b91a3", "11fc787069c899dc00f329d4b074d233",
        "5ebe59ea6881463cb23e9f77fab3334a", "84fcf082d703a451defb5487c2cce49f",
        "fb914297e7d23ed86606f3923edaca88", "e0555e2a492f034fd4110cbc2119812a",
        "7bc0ff111e4e4beade73ede5d8341003", "d0dd4dbb5c5a575d97dcc89c730d6078",
        "a688abea0d5c97057a3590321b382905", "ca99eabd4be33ffd1516790efa25583f"))}
GITHUB: List[Tuple[str, str, str, Dict[str, str]]] = [
    ("lijie2020/vae", "6aa58aba724f46dba967fc7058945941d171d433", "data/MNIST/MNIST/raw", {
        # the official LeCun files, byte for byte (torchvision's md5s)
        "mnist/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "mnist/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        "mnist/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432"}),
    ("karpathy/convnetjs", "39afa8cd5e4cfb5771dc8a1f51bc56aa080f0b51", "demo/mnist", {
        **_MNIST_SPRITES, "mnist/convnetjs/mnist_labels.js": "2c28e1b795289b0e0486d7c7fa25176e"}),
    ("karpathy/convnetjs", "39afa8cd5e4cfb5771dc8a1f51bc56aa080f0b51", "demo/cifar10", {
        "cifar10/convnetjs/cifar10_batch_0.png": "22905c3a5cc5e101d06a2b6d6087eff0",
        "cifar10/convnetjs/cifar10_batch_1.png": "268c70910bb9bd5055b57d0870f26d63",
        "cifar10/convnetjs/cifar10_batch_2.png": "7276547afd77ffb906d58242360a2534",
        "cifar10/convnetjs/cifar10_batch_3.png": "7daf46aac2cef4fae955f89c83a9c34f"}),
    ("larrabeew/covnetJS", "0d2866f3c12431c9044d3f275a588c12dc785926", "demo/cifar10", {
        "cifar10/convnetjs/cifar10_batch_50.png": "fc6b4e3450caf155c495dd8de98e47bf",  # test 0..999
        "cifar10/convnetjs/cifar10_labels.js": "cca178ce60262e7c6f380803befdbeff"}),
    ("zalandoresearch/fashion-mnist", "b2617bb6d3ffa2e429640350f613e3291e10b141", "data/fashion", {
        "fashion-mnist/t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        "fashion-mnist/train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe"}),
]
FOOLBOX = "foolbox==3.3.4"
# The wheel's foolbox/data/<prefix>_NN_L.png → <dataset>/foolbox/; the sha256 of every extracted
# path and its bytes, in sorted order (each as path, a NUL byte, the bytes).
FOOLBOX_PREFIXES = {"mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100",
                    "fashionMNIST": "fashion-mnist"}
FOOLBOX_FILES = 80
FOOLBOX_DIGEST = "b6a35f89d0fa1d7936e9b996ada52bd1db92355c86058712c3f30cfa716d3f40"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def github_files() -> Dict[str, Tuple[str, str]]:
    """{path in DEST: (raw URL at the pinned commit, md5)}."""
    return {path: (f"https://raw.githubusercontent.com/{repo}/{commit}/{folder}/{Path(path).name}",
                   digest)
            for repo, commit, folder, files in GITHUB for path, digest in files.items()}


def _download(url: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as r:
        path.write_bytes(r.read())


def _pip_download_foolbox(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp),
                    FOOLBOX], check=True)
    return next(tmp.glob("foolbox-*.whl"))


def foolbox_samples(wheel: Path) -> Dict[str, bytes]:
    """{path in DEST: bytes} of the sample PNGs in foolbox's wheel."""
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            stem = Path(name).name
            prefix = stem.split("_")[0]
            if name.startswith("foolbox/data/") and stem.endswith(".png") and prefix in FOOLBOX_PREFIXES:
                out[f"{FOOLBOX_PREFIXES[prefix]}/foolbox/{stem}"] = z.read(name)
    return out


def samples_digest(files: Dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path])
    return h.hexdigest()


def fetch(dest: Path, download: Callable[[str, Path], None] = _download,
          foolbox_wheel: Callable[[Path], Path] = _pip_download_foolbox) -> List[str]:
    """Fill ``dest``; returns the paths it wrote (none when everything was already there). A file
    whose md5 is wrong after its download raises, naming it, and is not left in place."""
    dest = Path(dest)
    wrote = []
    for rel, (url, digest) in github_files().items():
        path = dest / rel
        if path.is_file() and md5(path) == digest:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        print(f"fetch: {url}", flush=True)
        download(url, part)
        got = md5(part)
        if got != digest:
            part.unlink()
            raise SystemExit(f"fetch: {url} has md5 {got}, expected {digest}; nothing was "
                             f"written for {rel}")
        os.replace(part, path)
        wrote.append(rel)
    have = {str(p.relative_to(dest)): p.read_bytes() for d in FOOLBOX_PREFIXES.values()
            for p in sorted((dest / d / "foolbox").glob("*.png"))}
    if len(have) != FOOLBOX_FILES or samples_digest(have) != FOOLBOX_DIGEST:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"fetch: pip download {FOOLBOX} (its 80 sample images)", flush=True)
            files = foolbox_samples(foolbox_wheel(Path(tmp)))
        if len(files) != FOOLBOX_FILES or samples_digest(files) != FOOLBOX_DIGEST:
            raise SystemExit(f"fetch: the {FOOLBOX} wheel's sample images are not the expected "
                             f"{FOOLBOX_FILES} files (digest {samples_digest(files)})")
        for rel, data in files.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
            wrote.append(rel)
    return wrote


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dest", nargs="?", default=str(REPO.parent / "shared" / "data"),
                   help="where to put the folder (default: <repo>/../shared/data, where the tests "
                        "look; elsewhere, point $FASTADV_SHARED_DATA at it)")
    args = p.parse_args(argv)
    wrote = fetch(Path(args.dest))
    print(f"fetch: {args.dest}: {len(wrote)} files written, "
          f"{len(github_files()) + FOOLBOX_FILES - len(wrote)} already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
