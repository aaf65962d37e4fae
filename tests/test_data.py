"""Datasets and image I/O: EDM layout round-trips, shape checks with helpful errors, digits."""
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.data import (DigitsDataset, ImageDataset, PointDataset, TensorImageDataset, load_digits_arrays,
                            open_dataset, to_model_input)
from pipelines.errors import UserError
from pipelines.imageio import read_images, save_npz, write_image_folder, write_image_zip


def _images(n, res=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, res, res, c), dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_round_trip_with_labels(tmp_path, channels):
    imgs, labels = _images(5, c=channels), [3, 0, 7, 7, 1]
    rel = write_image_folder(tmp_path / "ds", imgs, labels)
    assert rel[0] == "00000/img00000000.png" and (tmp_path / "ds" / rel[4]).is_file()
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["labels"][2] == ["00000/img00000002.png", 7]
    ds = ImageDataset(tmp_path / "ds")
    assert len(ds) == 5 and ds.shape == (channels, 8, 8) and ds.label_dim == 8
    x, y = ds[2]
    assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(imgs[2]).permute(2, 0, 1)) and y == 7
    back, back_labels = read_images(tmp_path / "ds")
    assert np.array_equal(back, imgs) and back_labels.tolist() == labels


def test_folder_append_keeps_layout_and_labels(tmp_path):
    write_image_folder(tmp_path, _images(3), [1, 2, 3])
    rel = write_image_folder(tmp_path, _images(2, seed=1), [4, 5], start_index=1000)
    assert rel == ["00001/img00001000.png", "00001/img00001001.png"]
    ds = ImageDataset(tmp_path)
    assert len(ds) == 5 and ds.labels.tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(UserError, match="mix labelled and unlabelled"):
        write_image_folder(tmp_path, _images(1), None, start_index=2000)


def test_zip_round_trip_is_stored(tmp_path):
    imgs = _images(4, c=1)
    write_image_zip(tmp_path / "ds.zip", imgs, [0, 1, 2, 3])
    with zipfile.ZipFile(tmp_path / "ds.zip") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    back, labels = read_images(tmp_path / "ds.zip")
    assert np.array_equal(back, imgs) and labels.tolist() == [0, 1, 2, 3]
    ds = open_dataset(tmp_path / "ds.zip")
    assert torch.equal(ds.get_batch([3, 1])[0], torch.from_numpy(imgs[[3, 1]]).permute(0, 3, 1, 2))


def test_unlabelled_sets_give_minus_one(tmp_path):
    write_image_folder(tmp_path, _images(2))
    assert json.loads((tmp_path / "dataset.json").read_text()) == {"labels": None}
    ds = ImageDataset(tmp_path)
    assert not ds.has_labels and ds.label_dim == 0 and ds[1][1] == -1


def test_npz_round_trip(tmp_path):
    imgs = _images(3)
    save_npz(tmp_path / "s.npz", imgs, labels=[2, 2, 9])
    back, labels = read_images(tmp_path / "s.npz")
    assert np.array_equal(back, imgs) and labels.tolist() == [2, 2, 9]
    ds = open_dataset(tmp_path / "s.npz")
    assert isinstance(ds, TensorImageDataset) and ds.label(2) == 9


def _png(path, size, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)


def test_mixed_resolutions_names_both_files(tmp_path):
    _png(tmp_path / "00000/img00000000.png", (32, 32))
    _png(tmp_path / "00000/img00000001.png", (64, 64))
    with pytest.raises(UserError) as e:
        ImageDataset(tmp_path)
    msg = str(e.value)
    assert "mixed resolutions" in msg and "img00000000.png is 32x32" in msg and "img00000001.png is 64x64" in msg
    assert "resize" in msg


@pytest.mark.parametrize("size,mode,expect", [
    ((16, 8), "L", "must be square"),
    ((12, 12), "L", "power of two"),
    ((8, 8), "RGBA", "greyscale or RGB"),
])
def test_bad_images_are_refused_with_advice(tmp_path, size, mode, expect):
    _png(tmp_path / "00000/img00000000.png", size, mode)
    with pytest.raises(UserError, match=expect) as e:
        ImageDataset(tmp_path)
    assert "img00000000.png" in str(e.value)


def test_mixed_channels_refused(tmp_path):
    _png(tmp_path / "a.png", (8, 8), "L")
    _png(tmp_path / "b.png", (8, 8), "RGB")
    with pytest.raises(UserError, match="mixed channel counts: a.png has 1, b.png has 3"):
        ImageDataset(tmp_path)


def test_empty_and_missing_sets(tmp_path):
    with pytest.raises(UserError, match="No images found"):
        ImageDataset(tmp_path)
    with pytest.raises(UserError, match="not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "junk.bin").write_bytes(b"xx")
    with pytest.raises(UserError, match="neither a folder nor a zip"):
        ImageDataset(tmp_path / "junk.bin")


def test_labels_must_cover_every_image(tmp_path):
    write_image_folder(tmp_path, _images(2), [0, 1])
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["00000/img00000000.png", 0]]}))
    with pytest.raises(UserError, match="no label for 00000/img00000001.png"):
        ImageDataset(tmp_path)


def test_digits_dataset():
    from sklearn.datasets import load_digits
    ref = load_digits()
    images, labels = load_digits_arrays()
    assert np.array_equal(images, ref.images) and np.array_equal(labels, ref.target)
    ds = DigitsDataset()
    assert len(ds) == 1797 and ds.shape == (1, 8, 8) and ds.label_dim == 10
    assert sorted(set(ds.labels.tolist())) == list(range(10))
    assert ds.images.dtype == torch.uint8 and ds.images.min() == 0 and ds.images.max() == 255
    # 17 source levels (0..16) map to round(v*255/16)
    assert set(ds.images.unique().tolist()) <= {round(v * 255 / 16) for v in range(17)}
    x = to_model_input(ds.get_batch([0])[0])
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    up = open_dataset("digits:16")
    assert up.shape == (1, 16, 16)
    assert torch.equal(up.images, ds.images.repeat_interleave(2, 2).repeat_interleave(2, 3))
    smooth = open_dataset("digits:16:bilinear")
    assert smooth.shape == (1, 16, 16) and not torch.equal(smooth.images, up.images)
    with pytest.raises(UserError, match="digits resolution"):
        open_dataset("digits:12")


def test_in_memory_and_points():
    with pytest.raises(UserError, match="uint8"):
        TensorImageDataset(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(UserError, match="labels must be 2 integers"):
        TensorImageDataset(_images(2), labels=[1])
    pts = PointDataset(np.ones((5, 2)), labels=[0, 1, 0, 1, 0])
    x, y = pts.get_batch([1, 2])
    assert x.dtype == torch.float32 and x.shape == (2, 2) and y.tolist() == [1, 0]
    assert torch.equal(to_model_input(x), x)  # points are used as-is
