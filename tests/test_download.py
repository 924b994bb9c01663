"""download.sh end to end against a local HTTP server on 127.0.0.1 serving fake archives."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

import fakedata
from data_loader import DataSpec, build_dataset

SCRIPT = Path(__file__).resolve().parent.parent / "download.sh"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder); the server does not support byte ranges, like many mirrors."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _run(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "SAGAN_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run(["bash", str(SCRIPT), *argv], env=full_env, capture_output=True, text=True, timeout=120)


def _cifar_archive(tmp_path: Path, served: Path) -> Path:
    src = fakedata.cifar10(tmp_path / "src", per_batch=2)
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(src, arcname="cifar-10-batches-py")
    return archive


def _args(tmp_path: Path, dataset: str, **kw: object) -> DataSpec:
    return DataSpec(dataset=dataset, image_path=str(tmp_path / "data"), data_dir=None, imsize=32,
                    lsun_category=kw.get("lsun_category", "church_outdoor"), max_images=0, full_decode=False)


def test_cifar10_download_verify_unpack(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    archive = _cifar_archive(tmp_path, served)
    r = _run(tmp_path, "cifar10", SAGAN_CIFAR10_URL=f"{url}/{archive.name}", SAGAN_CIFAR10_MD5=_md5(archive))
    assert r.returncode == 0, r.stderr
    assert "MD5 ok" in r.stdout
    ds, nc = build_dataset(_args(tmp_path, "cifar10"))
    assert (len(ds), nc) == (10, 10)


def test_celeba_download(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    src = fakedata.celeba(tmp_path / "src", n=4)  # .../CelebA/img_align_celeba
    archive = served / "celeba.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(src.iterdir()):
            z.write(f, f"img_align_celeba/{f.name}")
    r = _run(tmp_path, "CelebA", SAGAN_CELEBA_URL=f"{url}/celeba.zip", SAGAN_CELEBA_MD5=_md5(archive))
    assert r.returncode == 0, r.stderr
    ds, _ = build_dataset(_args(tmp_path, "celeb"))
    assert len(ds) == 4


def test_lsun_download_any_category(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    db = fakedata.lsun(tmp_path / "src", "bridge", n=5)
    with zipfile.ZipFile(served / "bridge_train_lmdb.zip", "w") as z:
        for f in sorted(db.iterdir()):
            z.write(f, f"bridge_train_lmdb/{f.name}")
    r = _run(tmp_path, "LSUN", "bridge", SAGAN_LSUN_BASE=url)
    assert r.returncode == 0, r.stderr
    ds, _ = build_dataset(_args(tmp_path, "lsun", lsun_category="bridge"))
    assert len(ds) == 5


def test_checksum_mismatch_stops_before_unpacking(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    archive = _cifar_archive(tmp_path, served)
    r = _run(tmp_path, "cifar10", SAGAN_CIFAR10_URL=f"{url}/{archive.name}", SAGAN_CIFAR10_MD5="0" * 32)
    assert r.returncode == 1
    assert "checksum mismatch" in r.stderr and "0" * 32 in r.stderr
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
    assert not (tmp_path / "data" / "cifar-10-python.tar.gz").exists()


def test_broken_download_restarts(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    archive = _cifar_archive(tmp_path, served)
    part = tmp_path / "data" / "cifar-10-python.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(archive.read_bytes()[: archive.stat().st_size // 3])  # an interrupted earlier download
    r = _run(tmp_path, "cifar10", SAGAN_CIFAR10_URL=f"{url}/{archive.name}", SAGAN_CIFAR10_MD5=_md5(archive))
    assert r.returncode == 0, r.stderr
    assert "downloading again from the start" in r.stderr  # this server cannot resume: clean restart
    assert not part.exists() and (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_unknown_name_prints_usage(tmp_path: Path) -> None:
    r = _run(tmp_path, "mnist")
    assert r.returncode == 2
    assert "unknown dataset 'mnist'" in r.stderr and "usage: bash download.sh" in r.stderr
    assert _run(tmp_path).returncode == 2


def test_refuses_plain_http_and_unsafe_archives(tmp_path: Path, server: tuple[str, Path]) -> None:
    r = _run(tmp_path, "cifar10", SAGAN_CIFAR10_URL="http://example.com/cifar.tar.gz")
    assert r.returncode == 1 and "refusing to download over anything but https" in r.stderr
    url, served = server
    with zipfile.ZipFile(served / "evil.zip", "w") as z:
        z.writestr("../escaped.txt", "x")
    r = _run(tmp_path, "CelebA", SAGAN_CELEBA_URL=f"{url}/evil.zip", SAGAN_CELEBA_MD5="")
    assert r.returncode != 0 and "outside" in r.stderr
    assert not (tmp_path / "data" / "escaped.txt").exists()


def test_inception_weights_download_and_hash(tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """`bash download.sh inception` fetches the file into the folder metrics.py looks in and checks its SHA-256."""
    from metrics import WEIGHTS_ENV, WEIGHTS_NAME, resolve_weights

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    url, served = server
    weights = fakedata.inception_weights(served / WEIGHTS_NAME)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    r = _run(tmp_path, "inception", SAGAN_INCEPTION_URL=f"{url}/{WEIGHTS_NAME}", SAGAN_INCEPTION_SHA256=digest[:8])
    assert r.returncode == 0, r.stderr
    assert "SHA256 ok" in r.stdout
    assert resolve_weights(None, str(tmp_path / "data")) == tmp_path / "data" / WEIGHTS_NAME
    (tmp_path / "data" / WEIGHTS_NAME).unlink()
    r = _run(tmp_path, "inception", SAGAN_INCEPTION_URL=f"{url}/{WEIGHTS_NAME}")  # the real file's prefix, 6726825d
    assert r.returncode == 1 and "checksum mismatch" in r.stderr and "6726825d" in r.stderr
    assert not (tmp_path / "data" / WEIGHTS_NAME).exists()


def _mmgen_names() -> dict[str, str]:
    """download.sh's table: short name -> path under the OpenMMLab base URL."""
    text = SCRIPT.read_text().split('MMGEN_FILES="', 1)[1].split('"', 1)[0]
    return dict(line.split() for line in text.strip().splitlines())


def test_mmgen_checkpoint_download_then_convert(tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """`bash download.sh mmgen_<name>` stores the file where `convert.py mmgen_<name>` finds it, checked
    against the SHA-256 prefix in its name (overridden here: the served file is a tiny stand-in)."""
    import convert

    names = _mmgen_names()
    assert len(names) == 19 and all(re.search(r"-[0-9a-f]{8}\.pth$", rel) for rel in names.values())
    table = (SCRIPT.parent / "docs" / "checkpoints.md").read_text()
    assert all(f"mmgen_{n}" in table for n in names), "every downloadable checkpoint is in the docs' table"
    url, served = server
    rel = names["sagan_cifar10_32_woinplace_fid"]
    (served / rel).parent.mkdir(parents=True)
    tiny = SCRIPT.parent / "tests/data/peer_checkpoints/mmagic_cifar10_sagan_tiny/mmgen0x_published.pth"
    (served / rel).write_bytes(tiny.read_bytes())
    digest = hashlib.sha256(tiny.read_bytes()).hexdigest()
    r = _run(tmp_path, "mmgen_sagan_cifar10_32_woinplace_fid", SAGAN_MMGEN_BASE=url, SAGAN_MMGEN_SHA256=digest[:8])
    assert r.returncode == 0, r.stderr
    stored = tmp_path / "data/checkpoints/mmgen_sagan_cifar10_32_woinplace_fid" / Path(rel).name
    assert stored.is_file() and "SHA256 ok" in r.stdout
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAGAN_DATA_DIR", str(tmp_path / "data"))
    assert convert.main(["mmgen_sagan_cifar10_32_woinplace_fid", "--version", "zoo", "--preset", "sagan_cifar10_32",
                         "--g_conv_dim", "4", "--d_conv_dim", "8", "--z_dim", "32"]) == 0
    ckpt = torch.load(tmp_path / "models/zoo/2.pt", weights_only=True)
    assert ckpt["source"]["files"]["G+D"]["sha256"] == digest and ckpt["source"]["channel_order"] == "bgr"
    stored.unlink()
    r = _run(tmp_path, "mmgen_sagan_cifar10_32_woinplace_fid", SAGAN_MMGEN_BASE=url)  # the real file's prefix, d50568a4
    assert r.returncode == 1 and "checksum mismatch" in r.stderr and "d50568a4" in r.stderr
    assert not stored.exists()
    r = _run(tmp_path, "mmgen_nope")
    assert r.returncode == 2 and "unknown checkpoint 'mmgen_nope'" in r.stderr and "mmgen_sagan_imagenet_128_biggan" in r.stderr


def test_fashion_mnist_download_checks_md5(tmp_path: Path, server: tuple[str, Path]) -> None:
    """The four upstream files are fetched into data/fashion-mnist/ and MD5-checked (the expected MD5s are
    overridden here: the served files are small stand-ins written in the idx format)."""
    from test_fmnist import fake_fmnist

    url, served = server
    fake_fmnist(served, n_train=30, n_test=10, gz=True)
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    md5s = " ".join(_md5(served / n) for n in names)
    r = _run(tmp_path, "fashion_mnist", SAGAN_FMNIST_BASE=url, SAGAN_FMNIST_MD5S=md5s)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("MD5 ok") == 4
    ds, classes = build_dataset(_args(tmp_path, "fashion_mnist"))
    assert (len(ds), classes) == (30, 10)
    for n in names:
        (tmp_path / "data" / "fashion-mnist" / n).unlink()
    r = _run(tmp_path, "fashion_mnist", SAGAN_FMNIST_BASE=url)  # torchvision's MD5s: the stand-ins do not match
    assert r.returncode == 1 and "checksum mismatch" in r.stderr and "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in r.stderr
    assert not (tmp_path / "data" / "fashion-mnist" / names[0]).exists()


def test_fashion_mnist_from_debian_checks_headers(tmp_path: Path) -> None:
    """With Debian's package installed nothing is downloaded; its recompressed files are checked by their idx
    headers (magic, 60,000/10,000 items, 28x28). Full-size all-black stand-ins are written here."""
    from test_fmnist import write_idx

    deb = tmp_path / "debian"
    for split, n in (("train", 60_000), ("test", 10_000)):
        write_idx(deb, split, np.zeros((n, 28, 28), np.uint8), np.zeros(n, np.uint8), gz=True)
    r = _run(tmp_path, "fashion_mnist", SAGAN_FMNIST_DEBIAN_DIR=str(deb))
    assert r.returncode == 0, r.stderr
    assert "(idx headers ok); nothing to download" in r.stdout and not (tmp_path / "data" / "fashion-mnist").exists()
    write_idx(deb, "test", np.zeros((9_999, 28, 28), np.uint8), np.zeros(9_999, np.uint8), gz=True)
    r = _run(tmp_path, "fashion_mnist", SAGAN_FMNIST_DEBIAN_DIR=str(deb))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "t10k-images-idx3-ubyte.gz is not the Fashion-MNIST file" in r.stderr and "10000" in r.stderr


def test_studiogan_hub_download_then_convert(tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """`bash download.sh studiogan_<name>` fetches the run's best G and D from the Hub's resolve URLs (served here
    from a local stand-in holding StudioGAN's own tiny files under the real paths) where convert.py finds them."""
    import convert

    table = SCRIPT.read_text().split('STUDIOGAN_FILES="', 1)[1].split('"', 1)[0]
    rows = {line.split()[0]: line.split()[1:] for line in table.strip().splitlines()}
    assert set(rows) == {"sagan_imagenet_128", "sngan_imagenet_128"}
    folder, step = rows["sagan_imagenet_128"]
    assert folder.startswith("studiogan_official_ckpt/ImageNet_tailored/ImageNet-SAGAN-256-train-")
    url, served = server
    tiny = SCRIPT.parent / "tests/data/peer_checkpoints/studiogan_imagenet_sagan_tiny"
    (served / folder).mkdir(parents=True)
    for role in ("G", "D"):
        (served / folder / f"model={role}-best-weights-step={step}.pth").write_bytes(
            (tiny / f"model={role}-best-weights-step=2.pth").read_bytes())
    r = _run(tmp_path, "studiogan_sagan_imagenet_128", SAGAN_STUDIOGAN_BASE=url)
    assert r.returncode == 0, r.stderr
    stored = tmp_path / "data/checkpoints/studiogan_sagan_imagenet_128"
    assert sorted(p.name for p in stored.iterdir()) == [f"model=D-best-weights-step={step}.pth", f"model=G-best-weights-step={step}.pth"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAGAN_DATA_DIR", str(tmp_path / "data"))
    assert convert.main(["studiogan_sagan_imagenet_128", "--version", "sg", "--preset", "studiogan_sagan_imagenet_128",
                         "--g_conv_dim", "2", "--d_conv_dim", "2", "--z_dim", "32", "--g_attn", "32", "--d_attn", "16"]) == 0
    (saved,) = (tmp_path / "models/sg").glob("*.pt")
    assert torch.load(saved, weights_only=True)["source"]["format"] == "studiogan"
    r = _run(tmp_path, "studiogan_nope")
    assert r.returncode == 2 and "studiogan_sngan_imagenet_128" in r.stderr
