"""Tests of discograd.data: IDX and .amat files, downloads, the data folder, binarization.

No test touches the network: downloads go to a local HTTP server on 127.0.0.1 (or file://
URLs) serving real IDX files written from the shared 10,000 MNIST digits. The test that
reads Debian's Fashion-MNIST files skips, saying why, where that package is not installed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import json
import re
import struct
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch

from discograd import data as D
from discograd.data import loaders, registry
from discograd.data.idx import encode_idx
from tests.stats import assert_mean_close, mean_is_close

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-10k.npz"
if not SHARED.is_file():
    SHARED = Path("/work/shared/data/mnist-10k.npz")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(scope="module")
def digits() -> Tuple[np.ndarray, np.ndarray]:
    """The shared 10,000 real MNIST digits: uint8 (10000, 28, 28) and labels (10000,)."""
    if not SHARED.is_file():
        pytest.skip(f"shared test data {SHARED} is missing")
    with np.load(SHARED) as archive:
        return archive["images"], archive["labels"]


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_idx_round_trip_is_exact(tmp_path, digits, name):
    images, labels = digits
    path = D.write_idx(tmp_path / name, images, compresslevel=1)
    D.write_idx(tmp_path / ("labels" + name[6:]), labels, compresslevel=1)
    raw = path.read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    # The header by the format's definition, independent of the reader under test.
    assert raw[:16] == b"\x00\x00\x08\x03" + struct.pack(">3I", 10000, 28, 28)
    assert len(raw) == 16 + images.size
    back = D.read_idx(path)
    assert back.dtype == np.uint8 and back.shape == images.shape
    assert np.array_equal(back, images)
    assert np.array_equal(D.read_idx(tmp_path / ("labels" + name[6:])), labels)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip_other_element_types(tmp_path, dtype):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) * 3
    back = D.read_idx(D.write_idx(tmp_path / "a.idx", a))
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, a)
    with pytest.raises(ValueError, match="array"):
        D.write_idx(tmp_path / "b.idx", a.astype(np.uint64))


def _raw_idx(digits) -> bytes:
    images, _ = digits
    return b"\x00\x00\x08\x03" + struct.pack(">3I", 100, 28, 28) + images[:100].tobytes()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[: 16 + 50 * 784], "truncated"),
        (lambda b: b[:10], "truncated IDX header"),
        (lambda b: b[:3], "too short"),
        (lambda b: b + b"\x00", "corrupt"),
        (lambda b: b"\x12\x34" + b[2:], "not an IDX file"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX element type"),
    ],
)
def test_damaged_idx_raises_error_naming_the_file(tmp_path, digits, damage, message):
    path = tmp_path / "damaged-idx3-ubyte"
    path.write_bytes(damage(_raw_idx(digits)))
    with pytest.raises(D.DataError, match=message) as info:
        D.read_idx(path)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_damaged_gzip_raises_error_naming_the_file(tmp_path, digits):
    blob = gzip.compress(_raw_idx(digits), compresslevel=1, mtime=0)
    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(D.DataError, match="truncated") as info:
        D.read_idx(cut)
    assert str(cut) in str(info.value)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    bad = tmp_path / "bad-idx3-ubyte.gz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(D.DataError, match="corrupt|truncated") as info:
        D.read_idx(bad)
    assert str(bad) in str(info.value)


# ---------------------------------------------------------------------------------------------
# .amat


def test_amat_round_trip_of_thresholded_real_digits(tmp_path, digits):
    images, _ = digits
    binary = (images[:300] > 127).astype(np.uint8).reshape(300, 784)
    path = D.write_amat(tmp_path / "binarized_mnist_test.amat", binary)
    lines = path.read_text().splitlines()
    assert len(lines) == 300 and lines[0].split() == [str(v) for v in binary[0]]
    assert len(lines[0]) == 2 * 784 - 1
    assert np.array_equal(D.read_amat(path), binary)
    # Tabs, runs of spaces and CRLF line ends take the line-by-line parser: same result.
    loose = tmp_path / "loose.amat"
    loose.write_text("\r\n".join("\t".join(line.split(" ")) + "  " for line in lines) + "\r\n")
    assert np.array_equal(D.read_amat(loose), binary)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[:2] + [rows[2].replace("0", "2", 1)] + rows[3:], "line 3"),
        (lambda rows: rows[:1] + [rows[1][2:]] + rows[2:], "line 2 has 783 values"),
        (lambda rows: rows[:3] + [rows[3] + " 1"], "line 4 has 785 values"),
        (lambda rows: [], "no images"),
    ],
)
def test_malformed_amat_raises_error_naming_the_file(tmp_path, digits, edit, message):
    images, _ = digits
    rows = [" ".join(map(str, r)) for r in (images[:4] > 127).astype(int).reshape(4, 784)]
    path = tmp_path / "broken.amat"
    path.write_text("".join(r + "\n" for r in edit(rows)))
    with pytest.raises(D.DataError, match=message) as info:
        D.read_amat(path)
    assert str(path) in str(info.value)


def _fake_binarized_mnist(root: Path, digits) -> Dict[str, np.ndarray]:
    images, _ = digits
    binary = (images > 127).astype(np.uint8).reshape(-1, 784)
    parts = {"train": binary[:500], "valid": binary[500:600], "test": binary[600:700]}
    folder = root / "binarized-mnist"
    folder.mkdir(parents=True)
    for role, rows in parts.items():
        D.write_amat(folder / f"binarized_mnist_{role}.amat", rows)
    return parts


def test_binarized_mnist_loader_reads_amat_files_and_checks_them(tmp_path, digits, monkeypatch):
    parts = _fake_binarized_mnist(tmp_path, digits)
    folder = tmp_path / "binarized-mnist"
    # With the published checksums the stand-in files are rejected, naming the file.
    with pytest.raises(D.ChecksumError, match="binarized_mnist_train.amat"):
        D.load("binarized-mnist", data_dir=tmp_path, download=False)
    files = {
        role: dataclasses.replace(
            f, urls=(), size=None, sha256=sha256((folder / f.name).read_bytes())
        )
        for role, f in registry.BINARIZED_MNIST.files.items()
    }
    spec = dataclasses.replace(registry.BINARIZED_MNIST, files=files)
    monkeypatch.setattr(loaders, "BINARIZED_MNIST", spec)
    s = D.load("binarized-mnist", data_dir=tmp_path, download=False)
    for role in ("train", "valid", "test"):
        assert torch.equal(getattr(s, role), torch.from_numpy(parts[role]).float())
        assert (getattr(s, f"{role}_labels") == -1).all()
    assert s.image_shape == (28, 28) and s.extra["verified"]["train"] == "sha256"
    assert s.extra["binarization"]["mode"] == "given" and "amat" in s.description


# ---------------------------------------------------------------------------------------------
# A local HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    files: Dict[str, bytes] = {}
    log: List[Tuple[str, Optional[str]]] = []
    ranges = True  # honour Range requests
    drops = 0  # the next `drops` responses stop halfway and close the connection

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        cls = type(self)
        rng = self.headers.get("Range")
        cls.log.append((self.path, rng))
        body = cls.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if cls.ranges and match:
            start = int(match.group(1))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if cls.drops > 0:
            cls.drops -= 1
            payload = payload[: len(payload) // 2]
            self.close_connection = True
        self.wfile.write(payload)
        self.wfile.flush()


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "log": [], "ranges": True, "drops": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def gz_images(digits) -> bytes:
    images, _ = digits
    return gzip.compress(encode_idx(images[:2000]), compresslevel=1, mtime=0)


def _remote(server, name: str, blob: bytes, **kw) -> D.RemoteFile:
    server.files[f"/{name}"] = blob
    kw.setdefault("sha256", sha256(blob))
    return D.RemoteFile(name, (f"{server.base}/{name}",), len(blob), **kw)


def test_download_verifies_and_renames_atomically(tmp_path, server, gz_images):
    file = _remote(server, "train-images-idx3-ubyte.gz", gz_images)
    dest = D.download(file, tmp_path / "cache" / file.name, backoff=0)
    assert dest.read_bytes() == gz_images
    assert not dest.with_name(dest.name + ".part").exists()
    assert server.log == [("/train-images-idx3-ubyte.gz", None)]


def test_download_md5_only_file(tmp_path, server, gz_images):
    good = _remote(server, "a.gz", gz_images, sha256=None, md5=hashlib.md5(gz_images).hexdigest())
    assert good.file_digest[0] == "md5"
    assert D.download(good, tmp_path / "a.gz", backoff=0).read_bytes() == gz_images
    bad = dataclasses.replace(good, md5="0" * 32)
    with pytest.raises(D.ChecksumError, match="md5"):
        D.download(bad, tmp_path / "b.gz", backoff=0, retries=0)


def test_checksum_mismatch_names_the_file_and_keeps_nothing(tmp_path, server, gz_images):
    file = _remote(server, "t10k-images-idx3-ubyte.gz", gz_images, sha256="ab" * 32)
    dest = tmp_path / "t10k-images-idx3-ubyte.gz"
    with pytest.raises(D.ChecksumError) as info:
        D.download(file, dest, backoff=0)
    assert str(dest) in str(info.value) and "sha256" in str(info.value)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    assert len(server.log) == 1  # wrong bytes are not fetched again from the same mirror


def test_dropped_connection_resumes_with_range(tmp_path, server, gz_images):
    file = _remote(server, "x.gz", gz_images)
    server.drops = 1
    dest = D.download(file, tmp_path / "x.gz", backoff=0, chunk_size=4096)
    assert dest.read_bytes() == gz_images
    (_, first), (_, second) = server.log
    assert first is None and second == f"bytes={len(gz_images) // 2}-"


def test_dropped_connection_without_range_support_retries_cleanly(tmp_path, server, gz_images):
    file = _remote(server, "x.gz", gz_images)
    server.ranges, server.drops = False, 2
    dest = D.download(file, tmp_path / "x.gz", backoff=0, retries=2)
    assert dest.read_bytes() == gz_images
    assert len(server.log) == 3 and server.log[1][1] is not None  # asked, got the whole file


def test_retries_are_bounded(tmp_path, server, gz_images):
    file = _remote(server, "x.gz", gz_images)
    server.ranges, server.drops = False, 100
    with pytest.raises(D.DownloadError, match="x.gz") as info:
        D.download(file, tmp_path / "x.gz", backoff=0, retries=2)
    assert "connection closed" in str(info.value)
    assert len(server.log) == 3 and not (tmp_path / "x.gz").exists()


def test_mirror_fallback_after_404(tmp_path, server, gz_images):
    file = _remote(server, "x.gz", gz_images)
    file = dataclasses.replace(file, urls=(f"{server.base}/missing/x.gz", *file.urls))
    assert D.download(file, tmp_path / "x.gz", backoff=0).read_bytes() == gz_images
    assert [p for p, _ in server.log] == ["/missing/x.gz", "/x.gz"]  # a 404 is not retried


def test_file_urls_and_stale_part(tmp_path, gz_images):
    src = tmp_path / "src" / "x.gz"
    src.parent.mkdir()
    src.write_bytes(gz_images)
    file = D.RemoteFile("x.gz", (src.as_uri(),), len(gz_images), sha256(gz_images))
    dest = tmp_path / "out" / "x.gz"
    dest.parent.mkdir()
    dest.with_name("x.gz.part").write_bytes(b"garbage that is not a prefix")
    assert D.download(file, dest, backoff=0).read_bytes() == gz_images
    assert not dest.with_name("x.gz.part").exists()


# ---------------------------------------------------------------------------------------------
# The data folder, finding files, loading IDX data sets


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.data_root() == tmp_path / "home" / ".cache" / "discograd"
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env"))
    assert D.data_root() == tmp_path / "env"
    assert D.data_root(tmp_path / "arg") == tmp_path / "arg"


def _fake_mnist(server, digits, name="mnist-test") -> Tuple[D.DatasetSpec, dict]:
    """A 9,000 + 1,000 image data set in the MNIST layout, served by ``server``."""
    images, labels = digits
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    arrays = {
        "train_images": images[:9000],
        "train_labels": labels[:9000],
        "test_images": images[9000:],
        "test_labels": labels[9000:],
    }
    files = {}
    for role, a in arrays.items():
        fname = registry.MNIST.files[role].name
        files[role] = _remote(server, fname, gzip.compress(encode_idx(a), 1, mtime=0))
    spec = registry.DatasetSpec(name, "test digits", "none", "CC BY-SA 3.0", files)
    return spec, arrays


def _check_fake_splits(s: D.Splits, arrays: dict) -> None:
    assert (len(s.train), len(s.valid), len(s.test)) == (8000, 1000, 1000)
    x = torch.from_numpy(arrays["train_images"].reshape(9000, 784)).float() / 255
    assert torch.equal(torch.cat([s.train, s.valid]), x)
    assert torch.equal(s.test, torch.from_numpy(arrays["test_images"].reshape(1000, 784)) / 255.0)
    assert torch.equal(s.valid_labels, torch.from_numpy(arrays["train_labels"][8000:]).long())
    assert s.image_shape == (28, 28) and s.description


def test_download_then_reuse_the_cache(tmp_path, server, digits, monkeypatch):
    spec, arrays = _fake_mnist(server, digits)
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env-root"))
    s = D.load_idx_dataset(spec, n_valid=1000, retries=0)  # data folder from the env var
    _check_fake_splits(s, arrays)
    assert len(server.log) == 4
    assert (tmp_path / "env-root" / "mnist-test" / "t10k-images-idx3-ubyte.gz").is_file()
    assert set(s.extra["verified"].values()) == {"sha256"}
    s2 = D.load_idx_dataset(spec, n_valid=1000)
    assert len(server.log) == 4 and torch.equal(s2.train, s.train)  # found on disk


def test_files_on_disk_skip_the_download(tmp_path, server, digits):
    spec, arrays = _fake_mnist(server, digits)
    torchvision_layout = tmp_path / "MNIST" / "raw"
    torchvision_layout.mkdir(parents=True)
    spec = dataclasses.replace(spec, folders=("MNIST/raw",))
    for f in spec.files.values():
        (torchvision_layout / f.name).write_bytes(server.files[f"/{f.name}"])
    s = D.load_idx_dataset(spec, data_dir=tmp_path, n_valid=1000)
    _check_fake_splits(s, arrays)
    assert server.log == []
    assert s.extra["files"]["train_images"].startswith(str(torchvision_layout))
    # A decompressed copy in the data folder itself is used too (its .gz digest cannot apply).
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in spec.files.values():
        (plain / f.name[:-3]).write_bytes(gzip.decompress(server.files[f"/{f.name}"]))
    s = D.load_idx_dataset(spec, data_dir=plain, n_valid=1000)
    _check_fake_splits(s, arrays)
    assert server.log == [] and set(s.extra["verified"].values()) == {"unverified"}


def test_missing_files_without_download_and_damaged_files(tmp_path, server, digits, caplog):
    spec, arrays = _fake_mnist(server, digits)
    with pytest.raises(D.DataNotFoundError, match="train-images-idx3-ubyte.gz") as info:
        D.load_idx_dataset(spec, data_dir=tmp_path, download=False, n_valid=1000)
    assert isinstance(info.value, FileNotFoundError) and server.log == []
    folder = tmp_path / spec.name
    folder.mkdir()
    for f in spec.files.values():
        (folder / f.name).write_bytes(server.files[f"/{f.name}"])
    labels = folder / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-4])
    with pytest.raises(D.DataError, match="train-labels-idx1-ubyte.gz: gzip stream is trunc"):
        D.load_idx_dataset(spec, data_dir=tmp_path, download=False, n_valid=1000)
    assert server.log == []
    # Allowed to download, the loader warns about the damaged copy and replaces it.
    with caplog.at_level("WARNING", logger="discograd.data"):
        s = D.load_idx_dataset(spec, data_dir=tmp_path, n_valid=1000, retries=0)
    _check_fake_splits(s, arrays)
    assert server.log == [("/train-labels-idx1-ubyte.gz", None)]
    assert str(labels) in caplog.text and labels.read_bytes() == server.files[server.log[0][0]]


def test_unsatisfiable_range_restarts_from_zero(tmp_path, server, gz_images):
    file = dataclasses.replace(_remote(server, "x.gz", gz_images), size=None)
    (tmp_path / "x.gz.part").write_bytes(b"\x00" * (len(gz_images) + 10))
    assert D.download(file, tmp_path / "x.gz", backoff=0, retries=0).read_bytes() == gz_images
    assert server.log == [("/x.gz", f"bytes={len(gz_images) + 10}-"), ("/x.gz", None)]


def test_stale_complete_part_with_wrong_bytes_is_fetched_again(tmp_path, server, gz_images):
    file = _remote(server, "x.gz", gz_images)
    (tmp_path / "x.gz.part").write_bytes(b"\x00" * len(gz_images))
    assert D.download(file, tmp_path / "x.gz", backoff=0).read_bytes() == gz_images
    assert server.log == [("/x.gz", None)]


def test_load_names_digits_and_npz(digits):
    s = D.load("digits")
    assert (len(s.train), len(s.valid), len(s.test)) == (1197, 200, 400)
    assert s.image_shape == (8, 8) and s.dim == 64 and 0 <= s.train.min() <= s.train.max() <= 1
    n = D.load(f"mnist-npz:{SHARED}", seed=3)
    assert (len(n.train), len(n.valid), len(n.test)) == (8000, 1000, 1000)
    images, labels = digits
    all_y = torch.cat([n.train_labels, n.valid_labels, n.test_labels])
    assert torch.equal(all_y.sort().values, torch.from_numpy(labels).long().sort().values)
    all_x = torch.cat([n.train, n.valid, n.test]).mul(255).round().to(torch.uint8).numpy()
    assert sorted(map(bytes, all_x)) == sorted(map(bytes, images.reshape(-1, 784)))
    assert len(set(n.valid_labels.tolist())) == 10  # shuffled: not the first class only
    assert "8,000 train" in n.description
    with pytest.raises(ValueError, match="name"):
        D.load("cifar")


def test_npz_without_images_names_the_file(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, pixels=np.zeros((10, 4, 4), np.uint8))
    with pytest.raises(D.DataError, match="x.npz: has no array 'images'"):
        D.load(f"mnist-npz:{path}")
    with pytest.raises(D.DataNotFoundError, match="missing.npz"):
        D.load(f"npz:{tmp_path / 'missing.npz'}")


def test_registry_lists_published_checksums():
    for spec in (registry.MNIST, registry.FASHION_MNIST, registry.BINARIZED_MNIST):
        for f in spec.files.values():
            assert f.size and re.fullmatch("[0-9a-f]{64}", f.sha256) and len(f.urls) >= 2
            assert all(u.endswith("/" + f.name) for u in f.urls)
    assert registry.MNIST.files["train_images"].urls[0].startswith("https://ossci-datasets")
    assert set(D.dataset_names()) == {"digits", "mnist", "fashion-mnist", "binarized-mnist"}


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST from Debian's dataset-fashion-mnist (an optional system package)

needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason=f"{FASHION_DIR} absent: install Debian's optional package dataset-fashion-mnist",
)


@needs_fashion
def test_fashion_mnist_from_the_system_package(tmp_path):
    s = D.load("fashion-mnist", data_dir=tmp_path, download=False)
    assert (len(s.train), len(s.valid), len(s.test)) == (50000, 10000, 10000)
    assert set(s.extra["verified"].values()) == {"content-sha256"}
    counts = torch.bincount(torch.cat([s.train_labels, s.valid_labels]), minlength=10)
    assert counts.tolist() == [6000] * 10  # the published class balance
    assert torch.bincount(s.test_labels).tolist() == [1000] * 10
    assert 0 <= float(s.train.min()) and float(s.train.max()) == 1.0
    assert str(FASHION_DIR) in s.description


@needs_fashion
def test_debian_files_reassemble_into_the_published_ones(tmp_path, server):
    """The registry's SHA-256 and MD5 hold for real bytes: the Debian .gz files, with the
    published gzip header (file name, time stamp) put back, are the published files."""
    spec = registry.FASHION_MNIST
    stamps = {"train": 1504176606, "t10k": 1504176627}
    for f in spec.files.values():
        body = (FASHION_DIR / f.name).read_bytes()[10:]
        name = f.name[: -len(".gz")].encode() + b"\x00"
        header = b"\x1f\x8b\x08\x08" + struct.pack("<I", stamps[f.name.split("-")[0]]) + b"\x00\x03"
        server.files[f"/{f.name}"] = header + name + body
        published = header + name + body
        assert len(published) == f.size
        assert sha256(published) == f.sha256 and hashlib.md5(published).hexdigest() == f.md5
    # Downloading them through the loader (system folder left out) checks the file digests.
    local = dataclasses.replace(spec, system_dirs=())
    s = D.load_idx_dataset(local, data_dir=tmp_path, mirrors=[server.base + "/"], retries=0)
    assert set(s.extra["verified"].values()) == {"sha256"} and len(server.log) == 4
    assert len(s.train) == 50000


# ---------------------------------------------------------------------------------------------
# Binarization


@pytest.fixture(scope="module")
def intensities(digits) -> torch.Tensor:
    images, _ = digits
    return torch.from_numpy(images[::5].reshape(-1, 784)).float() / 255  # 2,000 real digits


def test_static_binarization_is_fixed_and_unbiased(intensities):
    x = intensities
    b = D.binarize(x, "static", seed=7)
    assert torch.equal(b, D.binarize(x, "static", seed=7))
    assert not torch.equal(b, D.binarize(x, "static", seed=8))
    assert set(b.unique().tolist()) <= {0.0, 1.0} and b.dtype == x.dtype
    # E[x_bin - x] = 0 pixel by pixel; the mean over 1.6M independent pixels is within 4 SE.
    assert_mean_close((b - x).flatten(), torch.tensor(0.0))
    # Negative controls that the same test rejects: thresholding, Bernoulli(x^1.1).
    assert not mean_is_close((D.binarize(x, "threshold") - x).flatten(), torch.tensor(0.0))
    biased = torch.bernoulli(x**1.1, generator=torch.Generator().manual_seed(7))
    assert not mean_is_close((biased - x).flatten(), torch.tensor(0.0))


def test_dynamic_binarization_changes_every_epoch_and_is_seeded(intensities):
    x = intensities[:500]
    one, two = D.DynamicBinarizer(x, seed=1), D.DynamicBinarizer(x, seed=1)
    epochs = [one.next_epoch() for _ in range(4)]
    assert all(torch.equal(e, f) for e, f in zip(epochs, two))  # same seed, same sequence
    assert not torch.equal(epochs[0], epochs[1]) and one.epoch == 4
    assert not torch.equal(D.DynamicBinarizer(x, seed=2).next_epoch(), epochs[0])
    assert_mean_close(torch.stack(epochs).sub(x).flatten(), torch.tensor(0.0))
    # Resuming from a state_dict continues the same sequence.
    state = one.state_dict()
    fresh = D.DynamicBinarizer(x, seed=1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.next_epoch(), one.next_epoch())
    # The functional form with the trainer's generator.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = D.binarize(x, "dynamic", generator=g1), D.binarize(x, "dynamic", generator=g2)
    assert torch.equal(a, b) and not torch.equal(a, D.binarize(x, "dynamic", generator=g1))
    record = one.describe()
    assert record["mode"] == "dynamic" and record["seed"] == 1 and json.dumps(record)


def test_binarization_rejects_bad_input(intensities):
    with pytest.raises(ValueError, match="mode"):
        D.binarize(intensities, "stochastic")
    with pytest.raises(ValueError, match="x"):
        D.binarize(intensities * 2, "static")
    with pytest.raises(ValueError, match="x"):
        D.binarize((intensities * 255).to(torch.uint8), "static")
    with pytest.raises(ValueError, match="mode"):
        D.describe_binarization("sometimes")
    assert D.describe_binarization("static", seed=0)["resampled"] == "never"


def test_truncated_npz_names_the_file(tmp_path):
    import numpy as np

    from discograd.data.errors import DataError
    from discograd.data.npz import load_npz

    good = tmp_path / "digits.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(good, images=rng.integers(0, 255, (50, 8, 8), dtype=np.uint8))
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated.npz"):
        load_npz(bad)


def test_npz_that_is_an_npy_or_has_non_integer_labels_names_the_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 6, 6), dtype=np.uint8)
    npy = tmp_path / "plain.npz"  # np.save's single array under an .npz name
    with open(npy, "wb") as fh:
        np.save(fh, images)
    with pytest.raises(D.DataError, match=r"plain.npz: is a single .npy array"):
        D.load_npz(npy)
    for name, labels in [("strings", np.array(["a"] * 20)), ("halves", np.arange(20) + 0.5)]:
        path = tmp_path / f"{name}.npz"
        np.savez(path, images=images, labels=labels)
        # Floats were cast (20.5 -> 20) in silence, strings failed with a bare ValueError.
        with pytest.raises(D.DataError, match=rf"{name}.npz: 'labels' must have an integer"):
            D.load_npz(path)
    for dtype in (np.uint8, np.int16, np.int64):  # any integer dtype (-1: a missing label)
        labels = np.arange(20).astype(dtype)
        labels[0] = -1 if np.issubdtype(dtype, np.signedinteger) else 0
        path = tmp_path / "ok.npz"
        np.savez(path, images=images, labels=labels)
        splits = D.load_npz(path)
        all_y = torch.cat([splits.train_labels, splits.valid_labels, splits.test_labels])
        assert all_y.dtype == torch.int64
        assert sorted(all_y.tolist()) == sorted(labels.astype(np.int64).tolist())
    # The project's own files load: the shared digits (uint8 labels).
    if SHARED.is_file():
        assert D.load_npz(SHARED).train_labels.dtype == torch.int64


def test_missing_local_file_is_not_retried_but_the_next_mirror_is(tmp_path, gz_images):
    import time

    good = tmp_path / "src" / "x.gz"
    good.parent.mkdir()
    good.write_bytes(gz_images)
    missing = (tmp_path / "src" / "nope.gz").as_uri()
    file = D.RemoteFile("x.gz", (missing,), len(gz_images), sha256(gz_images))
    # backoff 30 s: one retry of the missing file would take 30 s.
    started = time.perf_counter()
    with pytest.raises(D.DownloadError, match="No such file") as info:
        D.download(file, tmp_path / "out" / "x.gz", retries=3, backoff=30.0)
    assert time.perf_counter() - started < 5.0
    assert str(info.value).count(missing) == 1  # one attempt, listed once
    for url in ("ftpx://host/x.gz",):  # a scheme urllib does not know: permanent as well
        bad = dataclasses.replace(file, urls=(url,))
        with pytest.raises(D.DownloadError, match="unknown url type"):
            D.download(bad, tmp_path / "out" / "x.gz", retries=3, backoff=30.0)
    # The next mirror is still tried.
    both = dataclasses.replace(file, urls=(missing, good.as_uri()))
    started = time.perf_counter()
    assert D.download(both, tmp_path / "out" / "x.gz", backoff=30.0).read_bytes() == gz_images
    assert time.perf_counter() - started < 5.0
