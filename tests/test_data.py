"""fastadv.data: readers on real pixels, download path, digits split, device batch loader."""
import hashlib
import importlib.util
import io
import os
import sys
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastadv.data as D
from fastadv.data import datasets as ds_mod
from fastadv.data import download as dl_mod
from fastadv.data import integrity
from fastadv.data.loader import crop_flip

import shared_data as SD


# ============================================================================ registry / errors
def test_unknown_name_and_split_raise_value_error_naming_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"dataset: unknown dataset 'imagenet'.*cifar10.*digits"):
        D.load_dataset("imagenet", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"split: .*train, test.*'valid'"):
        D.load_dataset("cifar10", data_dir=tmp_path, split="valid")
    with pytest.raises(ValueError, match="split"):
        D.load_dataset("digits", split="extra")


def test_default_data_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTADV_DATA", str(tmp_path))
    assert D.default_data_dir() == str(tmp_path)
    monkeypatch.delenv("FASTADV_DATA")
    assert D.default_data_dir() == os.path.join(os.path.expanduser("~"), ".cache", "fastadv")


# ============================================================================ digits
def test_digits_split_is_stratified_disjoint_complete_and_fixed():
    sk = pytest.importorskip("sklearn.datasets")
    raw = sk.load_digits()
    tr, te, al = (D.load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(tr), len(te), len(al)) == (1438, 359, 1797)
    assert tr.images.shape == (1438, 1, 8, 8) and tr.images.dtype == torch.uint8
    assert tr.labels.dtype == torch.int64 and tr.num_classes == 10 and tr.name == "digits"
    assert al.class_counts().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # Stratified: every class is 20 % ± one sample in test.
    for c, (n_te, n_all) in enumerate(zip(te.class_counts().tolist(), al.class_counts().tolist())):
        assert n_te == round(0.2 * n_all), c
    # 0..16 → 0..255 exactly.
    want = torch.round(torch.as_tensor(raw.images, dtype=torch.float64) * 255 / 16).to(torch.uint8)
    assert torch.equal(al.images[:, 0], want) and torch.equal(al.labels, torch.as_tensor(raw.target))
    assert al.images.max() == 255 and al.images.min() == 0
    # Disjoint and complete: train ∪ test is exactly the 1,797 bundled images.
    train_idx, test_idx = D.digits._split_indices(al.labels)
    assert torch.equal(torch.sort(torch.cat([train_idx, test_idx])).values, torch.arange(1797))
    assert torch.equal(tr.images, al.images[train_idx]) and torch.equal(te.labels, al.labels[test_idx])
    # Fixed: a second load gives the same split.
    assert torch.equal(D.load_dataset("digits", split="test").images, te.images)
    x = te.float_images()
    assert x.dtype == torch.float32 and x.shape == (359, 1, 8, 8)
    assert torch.allclose(x * 255, te.images.float())


# ============================================================================ CIFAR on real pixels
@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    root = SD.require_shared_data()
    dest = tmp_path_factory.mktemp("cifar10")
    return dest, SD.build_cifar10_batches(root, dest)


def test_cifar10_reader_on_real_pixels(cifar10_dir):
    dest, src = cifar10_dir
    # verify=False: these batches hold the real pixels but are not the official files (md5).
    tr = D.load_dataset("cifar10", data_dir=dest, split="train", download=False, verify=False)
    te = D.load_dataset("cifar10", data_dir=dest, split="test", download=False, verify=False)
    assert (len(tr), len(te)) == (4000, 1000)
    assert tr.images.shape == (4000, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert tr.classes[0] == "airplane" and tr.classes[9] == "truck" and tr.num_classes == 10
    assert torch.equal(tr.labels, torch.from_numpy(src["train_labels"]))
    assert te.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # Every pixel equals the lossless sprite (NCHW vs the sprite's HWC).
    assert torch.equal(tr.images.permute(0, 2, 3, 1), torch.from_numpy(src["train"]))
    assert torch.equal(te.images.permute(0, 2, 3, 1), torch.from_numpy(src["test"]))
    # Test image 0 matches its published checksum, and a few pixels spelled out.
    hwc = te.images[0].permute(1, 2, 0).contiguous().numpy()
    assert hashlib.sha256(hwc.tobytes()).hexdigest() == SD.CIFAR10_TEST0_SHA256
    for (i, c, h, w) in [(0, 0, 0, 0), (17, 2, 31, 5), (3999, 1, 16, 31)]:
        assert int(tr.images[i, c, h, w]) == int(src["train"][i, h, w, c])
    assert tr.augment == {"padding": 4, "flip": True}


def test_cifar10_foolbox_pngs_agree_with_reader(cifar10_dir):
    dest, _ = cifar10_dir
    te = D.load_dataset("cifar10", data_dir=dest, split="test", download=False, verify=False)
    for i, y, px in SD.foolbox_samples(SD.require_shared_data() / "cifar10" / "foolbox"):
        assert int(te.labels[i]) == y
        assert torch.equal(te.images[i].permute(1, 2, 0), torch.from_numpy(px))


def test_cifar100_reader_fine_labels(tmp_path):
    src = SD.build_cifar100(SD.require_shared_data(), tmp_path)
    te = D.load_dataset("cifar100", data_dir=tmp_path, split="test", download=False, verify=False)
    assert len(te) == 20 and te.num_classes == 100 and te.classes[5] == "c5"
    assert te.labels.tolist() == src["labels"].tolist()
    assert torch.equal(te.images.permute(0, 2, 3, 1), torch.from_numpy(src["images"]))


def test_cifar_reader_rejects_malformed_batch(tmp_path):
    bad = tmp_path / "cifar-10-batches-py"
    bad.mkdir()
    import pickle
    with open(bad / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"b'data' must be uint8 \[N, 3072\]"):
        D.load_dataset("cifar10", data_dir=tmp_path, split="test", download=False, verify=False)


# ============================================================================ MNIST idx on real pixels
@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    root = SD.require_shared_data()
    dest = tmp_path_factory.mktemp("mnist")
    return dest, SD.build_mnist(root, dest)


def test_mnist_idx_rebuilt_from_sprites_is_the_official_file(mnist_dir):
    dest, _ = mnist_dir
    assert D.md5sum(str(dest / "mnist" / "train-images-idx3-ubyte")) == SD.MNIST_TRAIN_IMAGES_RAW_MD5


def test_mnist_reader_raw_and_gzipped_idx(mnist_dir):
    dest, src = mnist_dir
    tr = D.load_dataset("mnist", data_dir=dest, split="train", download=False)  # raw idx
    te = D.load_dataset("mnist", data_dir=dest, split="test", download=False)  # official .gz
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.class_counts().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert te.class_counts().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.equal(tr.images[:, 0], torch.from_numpy(src["train"]))
    js = SD.read_js_labels(SD.require_shared_data() / "mnist" / "convnetjs" / "mnist_labels.js")
    assert torch.equal(torch.cat([tr.labels, te.labels]), torch.from_numpy(js))
    for i, y, px in SD.foolbox_samples(SD.require_shared_data() / "mnist" / "foolbox"):
        assert int(te.labels[i]) == y and torch.equal(te.images[i, 0], torch.from_numpy(px))
    assert tr.augment is None  # MNIST recipes train without augmentation


def test_mnist_torchvision_layout_is_found(mnist_dir, tmp_path):
    dest, _ = mnist_dir
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        os.symlink(dest / "mnist" / f, raw / f)
    assert len(D.load_dataset("mnist", data_dir=tmp_path, split="test", download=False)) == 10000


def test_fashion_mnist_reader(tmp_path):
    src = SD.build_fashion_test(SD.require_shared_data(), tmp_path)
    te = D.load_dataset("fashion-mnist", data_dir=tmp_path, split="test", download=False)
    assert len(te) == 20 and te.classes[9] == "Ankle boot"
    # The official label file agrees with the labels in the PNG names.
    assert te.labels.tolist() == src["file_labels"].tolist() == src["labels"].tolist()
    assert torch.equal(te.images[:, 0], torch.from_numpy(src["images"]))


def test_idx_reader_rejects_truncated_and_non_idx(tmp_path):
    from fastadv.data.formats import read_idx
    good = SD.idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    (tmp_path / "ok").write_bytes(good)
    assert read_idx(str(tmp_path / "ok")).tolist() == np.arange(24).reshape(2, 3, 4).tolist()
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(tmp_path / "short"))
    (tmp_path / "junk").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(str(tmp_path / "junk"))


# ============================================================================ SVHN .mat
def test_svhn_mat_reader_layout_and_label_10_is_0(tmp_path, cifar10_dir):
    pytest.importorskip("scipy.io", reason="SVHN's .mat reader needs SciPy")
    _, src = cifar10_dir
    x = src["test"][:30]
    digits = np.arange(30) % 10
    SD.build_svhn_mat(tmp_path / "svhn" / "test_32x32.mat", x, digits)
    te = D.load_dataset("svhn", data_dir=tmp_path, split="test", download=False)
    assert te.labels.tolist() == digits.tolist()
    assert torch.equal(te.images.permute(0, 2, 3, 1), torch.from_numpy(x))
    assert te.augment == {"padding": 4, "flip": False}


def test_svhn_without_scipy_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "train_32x32.mat").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `from scipy.io import ...` fail
    with pytest.raises(ImportError, match="needs SciPy"):
        D.load_dataset("svhn", data_dir=tmp_path, split="train", download=False)


# ============================================================================ download
def test_md5_table_matches_the_official_files_in_shared_data():
    root = SD.require_shared_data()
    for name in ("mnist", "fashion-mnist"):
        for f in ("t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"):
            assert D.RESOURCES[name][f] == D.md5sum(str(root / name / f)), (name, f)
    assert D.RESOURCES["mnist"]["t10k-images-idx3-ubyte.gz"] == D.md5sum(
        str(root / "mnist" / "t10k-images-idx3-ubyte.gz"))


def test_download_file_url_right_md5(tmp_path):
    src = tmp_path / "src.bin"
    payload = os.urandom(3 << 20)  # > one read chunk
    src.write_bytes(payload)
    dest = tmp_path / "out" / "file.bin"
    md5 = hashlib.md5(payload).hexdigest()
    assert D.download_url(src.as_uri(), str(dest), md5, progress=False) == str(dest)
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]

    def must_not_fetch(*a, **k):
        raise AssertionError("a verified file must not be fetched again")
    D.download_url(src.as_uri(), str(dest), md5, progress=False, opener=must_not_fetch)


def test_download_wrong_md5_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    out = tmp_path / "out"
    with pytest.raises(D.DownloadError, match="md5 mismatch"):
        D.download_url(src.as_uri(), str(out / "f.bin"), "0" * 32, progress=False)
    assert list(out.iterdir()) == []  # no file, no .part left behind


def test_download_replaces_corrupt_existing_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"good")
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"corrupt")
    D.download_url(src.as_uri(), str(dest), hashlib.md5(b"good").hexdigest(), progress=False)
    assert dest.read_bytes() == b"good"


def _offline(*a, **k):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_offline_is_a_clear_error_saying_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setattr(dl_mod.urllib.request, "urlopen", _offline)
    with pytest.raises(D.DownloadError) as e:
        D.load_dataset("mnist", data_dir=tmp_path, split="test", download=True)
    msg = str(e.value)
    assert str(tmp_path / "mnist") in msg and "t10k-images-idx3-ubyte.gz" in msg
    assert "t10k-labels-idx1-ubyte.gz" in msg and "name resolution" in msg
    with pytest.raises(D.DownloadError, match=r"cifar-10-batches-py[\s\S]*data_batch_5"):
        D.load_dataset("cifar10", data_dir=tmp_path, split="train", download=True)
    with pytest.raises(D.DownloadError, match=r"download=False[\s\S]*test_32x32.mat"):
        D.load_dataset("svhn", data_dir=tmp_path, split="test", download=False)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing half-written


def test_mnist_download_falls_back_to_second_mirror(tmp_path, monkeypatch, mnist_dir):
    dest, _ = mnist_dir
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (mirror / f).write_bytes((dest / "mnist" / f).read_bytes())
    monkeypatch.setattr(ds_mod, "MNIST_MIRRORS", [(tmp_path / "dead").as_uri() + "/",
                                                  mirror.as_uri() + "/"])
    data = tmp_path / "data"
    te = D.load_dataset("mnist", data_dir=data, split="test", download=True)  # official md5s checked
    assert len(te) == 10000 and int(te.labels[0]) == 7
    assert sorted(p.name for p in (data / "mnist").iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                                   "t10k-labels-idx1-ubyte.gz"]


def test_cifar10_download_and_extract(tmp_path, monkeypatch, cifar10_dir):
    dest, src = cifar10_dir
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(dest / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(D.RESOURCES, "cifar10", {archive.as_uri(): D.md5sum(str(archive))})
    # The extracted files are checked against the "official" checksums: here, those of our batches.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(integrity.OFFICIAL_MD5, "cifar10", {
        p.name: D.md5sum(str(p)) for p in (dest / "cifar-10-batches-py").iterdir()})
    te = D.load_dataset("cifar10", data_dir=tmp_path / "data", split="test", download=True)
    assert torch.equal(te.images.permute(0, 2, 3, 1), torch.from_numpy(src["test"]))
    # A wrong checksum is refused and nothing is extracted.
    monkeypatch.setitem(D.RESOURCES, "cifar10", {archive.as_uri(): "f" * 32})
    with pytest.raises(D.DownloadError, match="md5 mismatch"):
        D.load_dataset("cifar10", data_dir=tmp_path / "data2", split="test", download=True)
    assert not (tmp_path / "data2" / "cifar-10-batches-py").exists()


def test_extract_refuses_path_traversal(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(D.DownloadError, match="unsafe member"):
        dl_mod.extract_tar(str(archive), str(tmp_path / "x"))
    assert not (tmp_path / "escaped.txt").exists()


# ============================================================================ BatchLoader
def _tensors(n=37, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


def test_loader_plain_pass_returns_the_data_in_order():
    x, y = _tensors()
    L = D.BatchLoader((x, y), batch_size=10, shuffle=False, augment=None, device="cpu")
    batches = list(L)
    assert len(L) == 4 and [b[0].shape[0] for b in batches] == [10, 10, 10, 7]
    assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64
    assert torch.equal(torch.cat([b[0] for b in batches]), x.float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    L = D.BatchLoader((x, y), batch_size=10, shuffle=False, drop_last=True, device="cpu")
    assert len(L) == 3 and sum(b[0].shape[0] for b in L) == 30
    assert L.images.dtype == torch.uint8  # resident as uint8, converted per batch


def test_loader_epochs_are_permutations_reproducible_by_seed_and_epoch():
    x, y = _tensors(n=50)
    L = D.BatchLoader((x, y), batch_size=16, shuffle=True, device="cpu", seed=3, return_index=True)
    e0 = list(L)  # epoch 0
    e1 = list(L)  # epoch 1 (auto-advanced)
    idx0, idx1 = (torch.cat([b[2] for b in e]) for e in (e0, e1))
    assert torch.equal(torch.sort(idx0).values, torch.arange(50)) and not torch.equal(idx0, idx1)
    for xb, yb, ib in e0:
        assert torch.equal(yb, y[ib]) and torch.equal(xb, x[ib].float() / 255)
    # A resumed run: a fresh loader with the same seed, set to epoch 1, reproduces epoch 1 exactly.
    R = D.BatchLoader((x, y), batch_size=16, shuffle=True, device="cpu", seed=3, return_index=True)
    R.set_epoch(1)
    assert all(torch.equal(a[2], b[2]) for a, b in zip(list(R), e1))
    R.load_state_dict({"epoch": 0, "seed": 3})
    assert torch.equal(torch.cat([b[2] for b in R]), idx0)
    # Mid-epoch resume.
    tail = list(L.epoch_batches(1, start_batch=2))
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(tail, e1[2:]))
    other = D.BatchLoader((x, y), batch_size=16, device="cpu", seed=4, return_index=True)
    assert not torch.equal(torch.cat([b[2] for b in other]), idx0)


def _reference_crop_flip(img, dy, dx, flip, p):
    out = F.pad(img, (p, p, p, p))[:, dy:dy + img.shape[1], dx:dx + img.shape[2]]
    return out.flip(2) if flip else out


def test_crop_flip_matches_pad_slice_flip_per_sample():
    x, _ = _tensors(n=12, h=6, w=9)
    g = torch.Generator().manual_seed(1)
    offsets = torch.randint(0, 9, (12, 2), generator=g)
    flips = torch.randint(0, 2, (12,), generator=g).bool()
    out = crop_flip(x, offsets, flips, 4)
    for i in range(12):
        want = _reference_crop_flip(x[i], int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i]), 4)
        assert torch.equal(out[i], want), i
    # Offset (p, p) without flip is the identity; (0, 0) shifts the image down-right by p.
    ident = crop_flip(x, torch.full((12, 2), 4), None, 4)
    assert torch.equal(ident, x)
    shifted = crop_flip(x, torch.zeros(12, 2, dtype=torch.long), None, 4)
    assert torch.equal(shifted[:, :, 4:, 4:], x[:, :, :2, :5]) and shifted[:, :, :4].sum() == 0


def test_loader_augmentation_is_the_epoch_plan_and_has_both_flips():
    x, y = _tensors(n=64, h=32, w=32)
    L = D.BatchLoader((x, y), batch_size=20, shuffle=True, augment=True, device="cpu", seed=7)
    assert L.augment == {"padding": 4, "flip": True}  # raw tensors: CIFAR default
    perm, offsets, flips = L.epoch_plan(0)
    got = torch.cat([b[0] for b in L])
    for j in range(64):
        want = _reference_crop_flip(x[perm[j]], int(offsets[j, 0]), int(offsets[j, 1]),
                                    bool(flips[j]), 4).float() / 255
        assert torch.equal(got[j], want), j
    assert 16 < int(flips.sum()) < 48 and offsets.min() == 0 and offsets.max() == 8
    assert got.min() >= 0 and got.max() <= 1


def test_loader_dataset_default_augment_and_options():
    d = D.load_dataset("digits", split="test")
    assert D.BatchLoader(d, 64, augment=True, device="cpu").augment is None  # digits: none
    L = D.BatchLoader(d, 64, augment={"padding": 1}, device="cpu", channels_last=True)
    assert L.augment == {"padding": 1, "flip": False}
    xb, yb = next(iter(L))
    assert xb.shape == (64, 1, 8, 8) and xb.is_contiguous(memory_format=torch.channels_last)
    assert D.BatchLoader(d, 64, augment="crop", device="cpu").augment == {"padding": 4, "flip": False}
    assert D.BatchLoader(d, 64, augment=False, device="cpu").augment is None
    xf = d.float_images()
    L = D.BatchLoader((xf, d.labels), 100, shuffle=False, device="cpu", dtype=torch.float64)
    xb, _ = next(iter(L))
    assert xb.dtype == torch.float64 and torch.equal(xb, xf[:100].double())  # floats not rescaled


def test_loader_bad_arguments():
    x, y = _tensors()
    with pytest.raises(ValueError, match="batch_size"):
        D.BatchLoader((x, y), 0)
    with pytest.raises(ValueError, match="augment: unknown 'rotate'"):
        D.BatchLoader((x, y), 8, augment="rotate")
    with pytest.raises(ValueError, match="augment: padding"):
        D.BatchLoader((x, y), 8, augment={"padding": -1})
    with pytest.raises(ValueError, match=r"labels must be a tensor \[37\]"):
        D.BatchLoader((x, y[:5]), 8)
    with pytest.raises(TypeError, match="data must be"):
        D.BatchLoader(x, 8)
    with pytest.raises(TypeError, match="uint8 or floating"):
        D.BatchLoader((x.long(), y), 8)
    with pytest.raises(ValueError, match="epoch"):
        D.BatchLoader((x, y), 8).set_epoch(-1)


@pytest.mark.gpu
def test_loader_on_cuda_gives_the_cpu_batches():
    x, y = _tensors(n=300, h=32, w=32)
    cpu = list(D.BatchLoader((x, y), 128, augment=True, device="cpu", seed=5))
    gpu = list(D.BatchLoader((x, y), 128, augment=True, device="cuda", seed=5))
    for (a, ya), (b, yb) in zip(cpu, gpu):
        assert b.is_cuda and torch.equal(a, b.cpu()) and torch.equal(ya, yb.cpu())


def test_small_cnn_learns_digits_through_the_loader():
    """End to end on real pixels: loader + SmallCNN reach >= 90 % test accuracy in 4 short epochs
    (about 94-96 % over seeds; a broken loader, label order or model stays near 10 %)."""
    from fastadv.models import create
    torch.manual_seed(0)
    tr, te = D.load_dataset("digits"), D.load_dataset("digits", split="test")
    model = create("small_cnn", in_channels=1)
    opt = torch.optim.Adam(model.parameters(), 4e-3)
    loader = D.BatchLoader(tr, 128, shuffle=True, augment=True, device="cpu", seed=0)
    for _ in range(4):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(te.float_images()).argmax(1) == te.labels).float().mean().item()
    assert acc >= 0.9, acc


# ============================================================================ never run a stranger's code
class _RunsShell:
    """Pickles to ``os.system(cmd)``: what a planted "dataset file" would do with a plain pickle."""
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _plant_cifar(folder, marker, name="test_batch"):
    import pickle
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "wb") as f:
        pickle.dump({b"data": _RunsShell(f"touch {marker}"), b"labels": [0]}, f, protocol=2)


@pytest.mark.parametrize("verify", [True, False])
def test_a_planted_cifar_pickle_never_runs(tmp_path, monkeypatch, verify):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    _plant_cifar(tmp_path / "cifar-10-batches-py", marker)
    # verify=True: refused by its checksum before it is opened; verify=False: by the unpickler.
    match = "not the official cifar10 file" if verify else "refusing to load posix.system"
    with pytest.raises(integrity.DataIntegrityError, match=match):
        D.load_dataset("cifar10", data_dir=tmp_path, split="test", download=False, verify=verify)
    assert not marker.exists()


def test_restricted_unpickler_reads_every_protocol_and_refuses_code_and_objects(tmp_path):
    import pickle
    from fastadv.data import formats
    d = {b"data": np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072), b"labels": [3, 1],
         b"filenames": [b"a.png", b"b.png"], b"batch_label": b"x"}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "b").write_bytes(pickle.dumps(d, protocol=proto))
        x, y = formats.read_cifar_batch(str(tmp_path / "b"))
        assert y.tolist() == [3, 1] and torch.equal(x.reshape(2, -1), torch.from_numpy(d[b"data"]))
    for bad, why in ((np.array([1, "a"], dtype=object), "object-dtype"),
                     (_RunsShell("true"), "posix.system"), (torch.zeros(1), "torch")):
        (tmp_path / "b").write_bytes(pickle.dumps({b"data": bad, b"labels": [0]}, protocol=2))
        with pytest.raises(integrity.DataIntegrityError, match=why):
            formats.read_cifar_batch(str(tmp_path / "b"))
    (tmp_path / "b").write_bytes(pickle.dumps(d, protocol=2)[:50])  # truncated
    with pytest.raises(integrity.DataIntegrityError, match="not a dataset pickle"):
        formats.read_cifar_batch(str(tmp_path / "b"))


def test_checksums_are_verified_on_every_read_with_a_stamp(tmp_path, monkeypatch, cifar10_dir):
    dest, src = cifar10_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "data"
    (data / "cifar-10-batches-py").mkdir(parents=True)
    for p in (dest / "cifar-10-batches-py").iterdir():
        (data / "cifar-10-batches-py" / p.name).write_bytes(p.read_bytes())
    monkeypatch.setitem(integrity.OFFICIAL_MD5, "cifar10", {
        p.name: D.md5sum(str(p)) for p in (dest / "cifar-10-batches-py").iterdir()})
    hashed = []
    real_md5 = integrity.md5sum
    monkeypatch.setattr(integrity, "md5sum", lambda p: hashed.append(os.path.basename(p)) or real_md5(p))
    te = D.load_dataset("cifar10", data_dir=data, split="test", download=False)
    assert sorted(hashed) == ["batches.meta", "test_batch"]  # first read: hashed, then stamped
    assert torch.equal(te.images.permute(0, 2, 3, 1), torch.from_numpy(src["test"]))
    hashed.clear()
    D.load_dataset("cifar10", data_dir=data, split="test", download=False)
    assert hashed == []  # the stamps match: no hashing
    # Swapped contents of the same size (a stamp cannot be reused: the times changed): refused.
    f = data / "cifar-10-batches-py" / "test_batch"
    raw = bytearray(f.read_bytes())
    raw[-200] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(integrity.DataIntegrityError, match=r"test_batch: not the official cifar10"):
        D.load_dataset("cifar10", data_dir=data, split="test", download=False)
    assert "test_batch" in hashed


def test_bad_verify_and_download_flags_are_type_errors(tmp_path):
    with pytest.raises(TypeError, match="verify must be True or False"):
        D.load_dataset("digits", split="test", verify="no")
    with pytest.raises(TypeError, match="download must be True or False"):
        D.load_dataset("digits", split="test", download="no")


# ============================================================================ the tests' real data
def _fetch_script():
    spec = importlib.util.spec_from_file_location(
        "fetch_test_data", Path(__file__).resolve().parents[1] / "scripts" / "fetch_test_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _serving(shared, fetch):
    """A download that serves each pinned URL from the shared folder, and a foolbox "wheel" built
    from its sample PNGs: the script's own checks then decide."""
    by_url = {url: rel for rel, (url, _) in fetch.github_files().items()}

    def download(url, path):
        path.write_bytes((shared / by_url[url]).read_bytes())

    def wheel(tmp):
        out = tmp / "foolbox-3.3.4-py3-none-any.whl"
        back = {v: k for k, v in fetch.FOOLBOX_PREFIXES.items()}
        with zipfile.ZipFile(out, "w") as z:
            for d in back:
                for png in sorted((shared / d / "foolbox").glob("*.png")):
                    z.writestr(f"foolbox/data/{png.name}", png.read_bytes())
            z.writestr("foolbox/__init__.py", "")
        return out
    return download, wheel


def test_fetch_test_data_rebuilds_the_folder_the_tests_read(tmp_path):
    """scripts/fetch_test_data.py: its pinned md5s and digest are those of this project's real-data
    folder, it rebuilds that folder file for file, a second run fetches nothing, and the tests'
    readers read the result."""
    shared = SD.require_shared_data()
    fetch = _fetch_script()
    for rel, (url, digest) in fetch.github_files().items():
        assert url.startswith("https://raw.githubusercontent.com/") and url.endswith(Path(rel).name)
        assert hashlib.md5((shared / rel).read_bytes()).hexdigest() == digest, rel
    download, wheel = _serving(shared, fetch)
    dest = tmp_path / "data"
    wrote = fetch.fetch(dest, download, wheel)
    assert len(wrote) == len(fetch.github_files()) + fetch.FOOLBOX_FILES == 112
    for ds in ("mnist", "cifar10", "cifar100", "fashion-mnist"):  # every file but the JPEGs
        for line in (shared / ds / "MD5SUMS").read_text().splitlines():
            digest, rel = line.split()
            if not rel.startswith("jpeg/"):
                assert hashlib.md5((dest / ds / rel).read_bytes()).hexdigest() == digest, rel

    def offline(*a):
        raise AssertionError("nothing should be fetched again")
    assert fetch.fetch(dest, offline, offline) == []
    batches = SD.build_cifar10_batches(dest, tmp_path / "built")
    assert batches["test"].shape == (1000, 32, 32, 3)


def test_fetch_test_data_refuses_a_wrong_file(tmp_path):
    shared = SD.require_shared_data()
    fetch = _fetch_script()
    download, wheel = _serving(shared, fetch)

    def tampered(url, path):
        download(url, path)
        if url.endswith("mnist_labels.js"):
            path.write_bytes(path.read_bytes().replace(b"7", b"1", 1))
    with pytest.raises(SystemExit, match="mnist_labels.js has md5 .* expected 2c28e1b7"):
        fetch.fetch(tmp_path, tampered, wheel)
    assert not list(tmp_path.rglob("mnist_labels.js*"))  # nothing left in place
