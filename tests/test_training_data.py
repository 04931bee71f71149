"""The Fashion-MNIST reader: the real files, and every way a file can be missing or damaged."""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest
import torch

from flexidit_trt.training import data
from flexidit_trt.training.data import (
    DataError,
    find_data_dir,
    load_split,
    read_idx,
    to_model_input,
    to_uint8,
)


def test_real_files_load_with_their_published_shapes(data_dir):
    train, test = load_split("train"), load_split("test")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28)
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    assert np.bincount(train.labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the release's first labels


def test_model_input_is_padded_with_the_background(data_dir):
    raw = load_split("test").images[:4]
    x = to_model_input(raw)
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, 0][:, border] == -1).all()
    # Inside: 0 → -1, 255 → 1, linear; and back to the same bytes.
    expected = torch.from_numpy(raw.astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], expected, rtol=0, atol=1e-6)
    assert (to_uint8(x)[:, 2:30, 2:30] == raw).all()


def test_bad_split_and_bad_arrays():
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("valid")
    with pytest.raises(ValueError, match="uint8 images"):
        to_model_input(np.zeros((2, 32, 32), dtype=np.uint8))


# -- damaged copies of the label file (small, so each case is cheap) -----------------------------------------
LABELS = "train-labels-idx1-ubyte"


@pytest.fixture
def copy_dir(data_dir, tmp_path):
    """A folder with links to the real files, ready to have one replaced."""
    for stem in data.FILES:
        (tmp_path / f"{stem}.gz").symlink_to(data_dir / f"{stem}.gz")
    return tmp_path


def replace(folder, stem, payload: bytes, compress: bool = True):
    path = folder / f"{stem}.gz"
    path.unlink()
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


def label_body(count=60000, magic=2049, n_bytes=None):
    n_bytes = count if n_bytes is None else n_bytes
    return struct.pack(">II", magic, count) + bytes(n_bytes)


@pytest.mark.parametrize(
    ("payload", "compress", "message"),
    [
        (b"not gzip at all", False, "not a valid gzip file"),
        (label_body(magic=2051), True, "bad IDX magic 0x00000803, expected 0x00000801"),
        (label_body(count=59999), True, r"holds shape \[59999\], expected \[60000\]"),
        (label_body(n_bytes=100), True, "truncated: 100 data bytes, expected 60000"),
        (label_body(n_bytes=60001), True, "has trailing bytes"),
        (b"\x00\x00", True, "truncated"),
    ],
    ids=["bad-gzip", "bad-magic", "wrong-count", "truncated", "trailing", "no-header"],
)
def test_damaged_file_is_named_with_the_problem(copy_dir, payload, compress, message):
    path = replace(copy_dir, LABELS, payload, compress)
    with pytest.raises(DataError, match=message) as info:
        load_split("train", copy_dir)
    assert str(path) in str(info.value)


def test_wrong_bytes_in_a_well_formed_file_fail_the_hash(copy_dir, data_dir):
    body = gzip.decompress((data_dir / f"{LABELS}.gz").read_bytes())
    path = replace(copy_dir, LABELS, body)  # same content, re-compressed: a different file than published
    np.testing.assert_array_equal(  # the structure is fine ...
        np.frombuffer(body, np.uint8, offset=8), load_split("train").labels.astype(np.uint8)
    )
    with pytest.raises(
        DataError, match="SHA-256 .* does not match the published file"
    ) as info:  # ... the hash is not
        read_idx(copy_dir, LABELS)
    assert str(path) in str(info.value)


def test_label_out_of_range(copy_dir):
    # A structurally valid labels file with a label 10 (a gzip whose hash fails is caught first, so read
    # the unpacked form, which carries no hash).
    (copy_dir / f"{LABELS}.gz").unlink()
    (copy_dir / LABELS).write_bytes(struct.pack(">II", 2049, 60000) + bytes([10]) * 60000)
    with pytest.raises(DataError, match="label 10 is not in 0..9"):
        load_split("train", copy_dir)


def test_missing_file_and_missing_folder(copy_dir, tmp_path):
    (copy_dir / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="file missing: .*t10k-images-idx3-ubyte.gz"):
        load_split("test", copy_dir)
    with pytest.raises(DataError, match="folder not found"):
        load_split("train", tmp_path / "nope")


def test_search_path_names_where_it_looked(monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(data, "default_search_path", lambda: (empty, tmp_path / "absent"))
    with pytest.raises(DataError, match="pass --data DIR") as info:
        find_data_dir()
    assert str(empty) in str(info.value)


def test_unpacked_files_are_read_too(data_dir, tmp_path):
    for stem in data.FILES:
        if stem.startswith("t10k"):
            with gzip.open(data_dir / f"{stem}.gz") as src, open(tmp_path / stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
    split = load_split("test", tmp_path)
    np.testing.assert_array_equal(split.images, load_split("test").images)
