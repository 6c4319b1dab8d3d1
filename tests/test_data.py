"""Dataset loaders on tiny files in each dataset's real on-disk format, and splits."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch

from mia.data import DATASETS, Dataset, Split, SplitConfig, load_dataset, make_split
from mia.data.safe_pickle import load_pickle
from mia.errors import MiaError

# ---------------------------------------------------------------- writers of the real formats


def write_cifar_batch(path, data, labels, label_key=b"labels", numpy1_names=False):
    """A batch as the real files hold it: a dict of bytes keys, uint8 N x 3072, list labels, protocol 2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"testing batch 1 of 1", b"data": data, label_key: list(labels),
             b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    blob = pickle.dumps(batch, protocol=2)
    if numpy1_names:  # the original files were written by numpy 1, under numpy.core
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(blob)


def save_image(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def rgb(rng, size):
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- image loaders


def test_cifar10_reads_batches_in_channel_major_order(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    first = None
    for k, name in enumerate(names):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        first = data if first is None else first
        write_cifar_batch(root / name, data, [k, 9 - k], numpy1_names=(k % 2 == 0))
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x.shape == (12, 3, 32, 32) and ds.x.dtype == torch.uint8
    assert ds.y.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5, 5, 4]
    assert ds.num_classes == 10 and ds.kind == "image" and ds.augment
    # The first 1024 bytes of a row are the red plane, row by row.
    assert np.array_equal(ds.x[0, 0].numpy(), first[0, :1024].reshape(32, 32))
    assert np.array_equal(ds.x[0, 2].numpy(), first[0, 2048:].reshape(32, 32))


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    for name, fine in (("train", [99, 3, 50]), ("test", [0])):
        path = tmp_path / "cifar-100-python" / name
        write_cifar_batch(path, rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8), fine, b"fine_labels")
    ds = load_dataset("cifar100", data_dir=tmp_path)
    assert ds.x.shape == (4, 3, 32, 32) and ds.y.tolist() == [99, 3, 50, 0] and ds.num_classes == 100


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=2))
    with pytest.raises(MiaError, match="refusing to load"):
        load_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_arrays_at_every_protocol(tmp_path, protocol):
    batch = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [3, 1],
             b"numpy_labels": list(np.array([3, 1]))}  # a file re-saved with np.int64 labels
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    assert loaded[b"labels"] == [3, 1]
    assert loaded[b"numpy_labels"] == [3, 1] and isinstance(loaded[b"numpy_labels"][0], np.int64)


def test_restricted_unpickler_reads_the_python_2_batches_cifar_ships(tmp_path):
    """The original CIFAR files are Python 2 pickles: keys and array buffers are byte strings read as latin-1 (a
    mutant reading them as ASCII survived: the tests wrote their batches with Python 3)."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02}U\x04data"  # {'data': array([200, 1, 255], dtype=uint8)} as Python 2 numpy wrote it
                     b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
                     b"(K\x01K\x03\x85cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
                     b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x03\xc8\x01\xfftbs.")
    loaded = load_pickle(path)
    assert list(loaded) == ["data"] and loaded["data"].tolist() == [200, 1, 255]


def test_restricted_unpickler_refuses_corrupt_file(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02}q\x00(")  # truncated
    with pytest.raises(MiaError, match="cannot read"):
        load_pickle(path)


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (32, 32, 3, 3), dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [9]], dtype=np.uint8)})
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :1], "y": np.array([[10]], dtype=np.uint8)})
    ds = load_dataset("svhn", data_dir=tmp_path)
    assert ds.x.shape == (4, 3, 32, 32) and ds.x.dtype == torch.uint8
    assert ds.y.tolist() == [0, 1, 9, 0] and not ds.augment
    assert np.array_equal(ds.x[1].numpy(), x[..., 1].transpose(2, 0, 1))
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :1], "y": np.array([[11]], dtype=np.uint8)})
    with pytest.raises(MiaError, match="labels 11..11, not 1..10"):  # not wrapped silently to 1
        load_dataset("svhn", data_dir=tmp_path)


def test_cinic10_reads_all_three_parts(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "cinic-10"
    for part in ("train", "valid", "test"):
        save_image(root / part / "airplane" / "a.png", rgb(rng, 32))
        save_image(root / part / "truck" / "b.png", rgb(rng, 32)[..., 0])  # greyscale, as some CINIC images are
    ds = load_dataset("cinic10", data_dir=tmp_path)
    assert ds.x.shape == (6, 3, 32, 32) and ds.x.dtype == torch.uint8
    assert ds.y.tolist() == [0, 1, 0, 1, 0, 1] and ds.num_classes == 2
    assert len(ds.mean) == 3 and all(0 < s for s in ds.std)


def test_cinic10_labels_every_part_by_the_classes_of_train(tmp_path):
    """A part that lacks a class folder does not shift the labels of the classes after it (a mutant numbering each
    part's own folders survived)."""
    rng = np.random.default_rng(5)
    root = tmp_path / "cinic-10"
    for part, classes in (("train", ("airplane", "truck")), ("valid", ("truck",)), ("test", ("airplane", "truck"))):
        for cls in classes:
            save_image(root / part / cls / "a.png", rgb(rng, 32))
    ds = load_dataset("cinic10", data_dir=tmp_path)
    assert ds.y.tolist() == [0, 1, 1, 0, 1] and ds.num_classes == 2


def test_tinyimagenet_reads_train_and_val(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("n02\nn01\n")
    for wnid in ("n01", "n02"):
        for i in range(2):
            save_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rgb(rng, 64))
    save_image(root / "val" / "images" / "val_0.JPEG", rgb(rng, 64))
    save_image(root / "val" / "images" / "val_1.JPEG", rgb(rng, 64)[..., 1])
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t63\t63\n"
                                                      "val_1.JPEG\tn02\t1\t2\t60\t61\n")
    ds = load_dataset("tinyimagenet", data_dir=tmp_path)
    assert ds.x.shape == (6, 3, 64, 64) and ds.x.dtype == torch.uint8
    assert ds.y.tolist() == [0, 0, 1, 1, 1, 0] and ds.num_classes == 2  # wnids.txt order
    # blank lines (an edited file, a trailing newline too many) are no bad lines
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t63\t63\n\n"
                                                      "val_1.JPEG\tn02\t1\t2\t60\t61\n \n")
    assert load_dataset("tinyimagenet", data_dir=tmp_path).y.tolist() == ds.y.tolist()


def test_imagefolder_resizes_and_converts(tmp_path):
    rng = np.random.default_rng(5)
    save_image(tmp_path / "benign" / "1.png", rgb(rng, 40))
    save_image(tmp_path / "benign" / "2.JPG", rgb(rng, 20))
    save_image(tmp_path / "malignant" / "3.bmp", rgb(rng, 16))
    (tmp_path / "malignant" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", data_dir=tmp_path, size="16", channels=1, augment="false")
    assert ds.x.shape == (3, 1, 16, 16) and ds.x.dtype == torch.uint8
    assert ds.y.tolist() == [0, 0, 1] and ds.num_classes == 2 and not ds.augment
    assert len(ds.mean) == 1
    with pytest.raises(MiaError, match="channels must be 1 or 3"):
        load_dataset("imagefolder", data_dir=tmp_path, channels=2)
    (tmp_path / ".ipynb_checkpoints").mkdir()  # made by browsing the folder in Jupyter: no class
    (tmp_path / "__MACOSX" / "benign").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "benign" / "._1.png").write_bytes(b"resource fork, not an image")
    again = load_dataset("imagefolder", data_dir=tmp_path, size="16", channels=1, augment="false")
    assert again.y.tolist() == [0, 0, 1] and again.num_classes == 2
    # a class folder's subfolders (per patient, per source) are the class's, as in torchvision's ImageFolder
    save_image(tmp_path / "malignant" / "patient-7" / "4.png", rgb(rng, 16))
    (tmp_path / "malignant" / ".ipynb_checkpoints").mkdir()
    save_image(tmp_path / "malignant" / ".ipynb_checkpoints" / "3-checkpoint.png", rgb(rng, 16))
    nested = load_dataset("imagefolder", data_dir=tmp_path, size="16", channels=1, augment="false")
    assert nested.y.tolist() == [0, 0, 1, 1] and nested.num_classes == 2
    (tmp_path / "unsorted").mkdir()
    with pytest.raises(MiaError, match="class folder\\(s\\) unsorted .* hold no images"):
        load_dataset("imagefolder", data_dir=tmp_path)
    with pytest.raises(MiaError, match="is a file, not a folder"):
        load_dataset("imagefolder", data_dir=tmp_path / "benign" / "1.png")


def test_cifar10_and_svhn_are_found_where_people_keep_them(tmp_path):
    """--data-dir pointing at cifar-10-batches-py itself, and torchvision's SVHN root made data/svhn."""
    from scipy.io import savemat

    rng = np.random.default_rng(8)
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        write_cifar_batch(tmp_path / "batches" / name, rng.integers(0, 256, (1, 3072), dtype=np.uint8), [k])
    assert load_dataset("cifar10", data_dir=tmp_path / "batches").y.tolist() == [0, 1, 2, 3, 4, 5]
    x = rng.integers(0, 256, (32, 32, 3, 2), dtype=np.uint8)
    (tmp_path / "svhn").mkdir()
    for split in ("train", "test"):
        savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x, "y": np.array([[10], [3]], dtype=np.uint8)})
    assert load_dataset("svhn", data_dir=tmp_path).y.tolist() == [0, 3, 0, 3]


@pytest.mark.parametrize("folder", ["CINIC-10", "cinic10", "."])
def test_cinic10_reads_the_archive_where_it_was_unpacked(tmp_path, folder):
    """CINIC-10.tar.gz has no top folder: `tar -xzf CINIC-10.tar.gz -C CINIC-10` (or -C <data-dir>)."""
    rng = np.random.default_rng(9)
    for part in ("train", "valid", "test"):
        for cls in ("airplane", "truck"):
            save_image(tmp_path / folder / part / cls / f"{part}-{cls}.png", rgb(rng, 32))
    ds = load_dataset("cinic10", data_dir=tmp_path)
    assert ds.x.shape == (6, 3, 32, 32) and ds.y.tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("val_layout", ["val/<wnid>/images", "val/<wnid>", "val/images/<wnid>",
                                        "val/<wnid> and an empty val/images"])
def test_tinyimagenet_reads_val_sorted_into_class_folders(tmp_path, val_layout):
    """The scripts that sort val/images into val/<wnid>/ (for torchvision ImageFolder) delete val/images;
    create_val_img_folder sorts it into val/images/<wnid>/ and keeps the annotations (read as val/images/<file>,
    every image was "missing")."""
    rng = np.random.default_rng(10)
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("n02\r\nn01\r\n")
    save_image(root / "train" / "n01" / "images" / "n01_0.JPEG", rgb(rng, 64))
    save_image(root / "train" / "n02" / "n02_0.JPEG", rgb(rng, 64))  # train flattened the same way
    for i, wnid in enumerate(("n01", "n02", "n02")):
        folder = (root / "val" / "images" / wnid if val_layout == "val/images/<wnid>" else
                  root / "val" / wnid / ("images" if val_layout == "val/<wnid>/images" else ""))
        save_image(folder / f"val_{i}.JPEG", rgb(rng, 64))
    if val_layout.endswith("empty val/images"):  # emptied, not deleted, by some scripts
        (root / "val" / "images").mkdir()
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t63\t63\n")  # left behind
    ds = load_dataset("tinyimagenet", data_dir=tmp_path)
    assert ds.x.shape == (5, 3, 64, 64) and ds.y.tolist() == [0, 1, 0, 0, 1]  # wnids.txt order: n02, n01


def test_imagefolder_pools_split_folders_and_enters_a_lone_archive_folder(tmp_path):
    """Dermnet comes as train/<class>/ and test/<class>/; CH-MNIST's zip unpacks into one folder of classes."""
    rng = np.random.default_rng(11)
    dermnet = tmp_path / "dermnet"
    save_image(dermnet / "train" / "Acne and Rosacea Photos" / "a.jpg", rgb(rng, 20))
    save_image(dermnet / "train" / "Eczema Photos" / "b.jpg", rgb(rng, 20))
    save_image(dermnet / "test" / "Eczema Photos" / "c.jpg", rgb(rng, 20))
    ds = load_dataset("imagefolder", data_dir=dermnet, size=8)
    assert ds.num_classes == 2 and ds.y.tolist() == [1, 0, 1]  # test/ then train/, classes in both
    kather = tmp_path / "chmnist" / "Kather_texture_2016_image_tiles_5000"
    save_image(kather / "01_TUMOR" / "a.tif", rgb(rng, 15))
    save_image(kather / "02_STROMA" / "b.tif", rgb(rng, 15))
    ds = load_dataset("imagefolder", data_dir=tmp_path / "chmnist", size=8)
    assert ds.num_classes == 2 and ds.y.tolist() == [0, 1]


def test_imagefolder_scales_16_bit_and_flattens_rgba_and_palette_images(tmp_path):
    """PIL clips 16-bit greyscale at 255 when converting; mia scales it (x-ray and microscopy PNGs)."""
    from PIL import Image

    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)  # 0..64512 of 65535
    (tmp_path / "a").mkdir()
    Image.fromarray(ramp).save(tmp_path / "a" / "deep.png")
    with Image.open(tmp_path / "a" / "deep.png") as image:
        assert image.mode.startswith("I")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    save_image(tmp_path / "b" / "alpha.png", rgba)
    Image.fromarray(np.full((8, 8), 3, dtype=np.uint8)).convert("P").save(tmp_path / "b" / "palette.png")
    ds = load_dataset("imagefolder", data_dir=tmp_path, size=8, channels=1)
    deep = ds.x[0, 0].numpy().astype(int)
    assert np.array_equal(deep, np.rint(ramp / 257.0).astype(int))  # not clipped to a white square
    rgb_ds = load_dataset("imagefolder", data_dir=tmp_path, size=8)
    assert rgb_ds.x.shape == (3, 3, 8, 8) and int(rgb_ds.x[1, 0, 0, 0]) == 200


def test_imagefolder_scales_float_images(tmp_path):
    """A float TIFF in [0, 1] read as black (PIL clips mode F to 0..255); one on the 8-bit scale as it is."""
    from PIL import Image

    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for name, pixels in (("unit", unit), ("bytes", unit * 200)):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "x.tif")
        with Image.open(tmp_path / name / "x.tif") as image:
            assert image.mode == "F"
    ds = load_dataset("imagefolder", data_dir=tmp_path, size=8, channels=1)
    (bytes_row,) = np.flatnonzero(ds.y.numpy() == 0)  # classes sorted: bytes, unit
    assert np.array_equal(ds.x[1 - bytes_row, 0].numpy(), np.rint(unit * 255).astype(np.uint8))
    assert np.array_equal(ds.x[bytes_row, 0].numpy(), np.rint(unit * 200).astype(np.uint8))


# ---------------------------------------------------------------- tabular loaders


def test_purchase100_reads_label_first_csv(tmp_path):
    rng = np.random.default_rng(6)
    feats = (rng.random((5, 600)) < 0.1).astype(int)
    labels = np.array([1, 100, 42, 7, 1])
    np.savetxt(tmp_path / "dataset_purchase", np.column_stack([labels, feats]), fmt="%d", delimiter=",")
    ds = load_dataset("purchase100", data_dir=tmp_path)
    assert ds.x.shape == (5, 600) and ds.x.dtype == torch.uint8 and ds.kind == "tabular"
    assert ds.y.tolist() == [0, 99, 41, 6, 0] and ds.num_classes == 100
    assert np.array_equal(ds.x.numpy(), feats)


def test_texas100_reads_feats_and_labels(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "texas" / "100"
    root.mkdir(parents=True)
    feats = (rng.random((4, 6169)) < 0.05).astype(int)
    np.savetxt(root / "feats", feats, fmt="%d", delimiter=",")
    (root / "labels").write_text("3\n100\n1\n55\n")
    ds = load_dataset("texas100", data_dir=tmp_path)
    assert ds.x.shape == (4, 6169) and ds.x.dtype == torch.uint8
    assert ds.y.tolist() == [2, 99, 0, 54]
    assert np.array_equal(ds.x.numpy(), feats)


@pytest.mark.parametrize("text", [
    "0,1,0\n1,1,0\n", "0,1,0\n1,1,0", "1\n0\n1\n", "7,0\n3,9\n",  # one-digit fields: the byte shortcut
    "0,1,0\r\n1,1,0\r\n", "10,1\n2,3\n", "3\n100\n1\n55\n", '"1",0,1\n"2",1,1\n',  # parsed
])
def test_int_tables_read_the_same_with_or_without_the_one_digit_shortcut(tmp_path, text):
    from mia.data.tabular import _read_digit_table, _read_int_table
    path = tmp_path / "table"
    path.write_bytes(text.encode())
    shortcut = _read_digit_table(path, chunk_rows=1)
    parsed = np.loadtxt(path, delimiter=",", quotechar='"', dtype=np.uint8, ndmin=2)
    one_digit = all(len(field) == 1 for line in text.split("\n") if line for field in line.split(","))
    assert (shortcut is not None) == one_digit
    if shortcut is not None:
        assert shortcut.dtype == np.uint8 and np.array_equal(shortcut, parsed)
    assert np.array_equal(_read_int_table("texas100", path), parsed)


def test_a_ragged_one_digit_table_is_refused_not_misread(tmp_path):
    from mia.data.tabular import _read_digit_table, _read_int_table
    path = tmp_path / "feats"
    path.write_text("0,1\n1,0\n1\n0,1,1\n")  # 16 bytes: as many as four lines like the first
    assert _read_digit_table(path) is None
    with pytest.raises(MiaError, match="not comma-separated"):
        _read_int_table("texas100", path)


@pytest.mark.parametrize("last_newline", [True, False])
def test_a_one_digit_table_that_grows_while_read_is_not_cut_short(tmp_path, monkeypatch, last_newline):
    """Rows appended after the shortcut measured the file (a copy still being written) were left out without a
    word; shrinking was caught. Now either change hands the file to the parser, which reads what is there."""
    import builtins

    import mia.data.tabular as tabular
    path = tmp_path / "feats"
    path.write_bytes(b"0,1\n1,0" + b"\n" * last_newline)

    class Growing:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def seek(self, *args):
            at = self.f.seek(*args)
            if args == (0,) and not appended:  # measured, about to read the rows: another writer appends one
                appended.append(True)
                with builtins.open(path, "ab") as g:
                    g.write(b"\n1,1\n"[last_newline:])
            return at

    appended = []
    monkeypatch.setattr(tabular, "open", lambda *a: Growing(builtins.open(*a)), raising=False)
    assert tabular._read_digit_table(path) is None
    assert np.array_equal(tabular._read_int_table("texas100", path), [[0, 1], [1, 0], [1, 1]])


def test_a_one_character_field_that_is_no_digit_is_refused_not_read_as_a_number(tmp_path):
    """The one-digit shortcut hands a table of other characters to the full parser, which refuses it (a mutant
    whose shortcut read the letter ``a`` as the number 49 survived)."""
    (tmp_path / "dataset_purchase").write_text("1,0,1\n2,a,0\n")
    with pytest.raises(MiaError, match="is not comma-separated 0/1 integers"):
        load_dataset("purchase100", data_dir=tmp_path)


def test_texas100_rejects_out_of_range_labels(tmp_path):
    root = tmp_path / "texas" / "100"
    root.mkdir(parents=True)
    (root / "feats").write_text("0,1\n1,0\n")
    (root / "labels").write_text("0\n5\n")
    with pytest.raises(MiaError, match="must be 1..100"):
        load_dataset("texas100", data_dir=tmp_path)


@pytest.mark.parametrize("labels, expected", [([1, 30, 2], [0, 29, 1]), ([0, 29, 2], [0, 29, 2])])
def test_location_reads_npz_with_one_or_zero_based_labels(tmp_path, labels, expected):
    (tmp_path / "location").mkdir()
    x = np.eye(3, 446, dtype=np.float32)
    np.savez(tmp_path / "location" / "data_complete.npz", x=x, y=np.array(labels))
    ds = load_dataset("location", data_dir=tmp_path)
    assert ds.x.shape == (3, 446) and ds.x.dtype == torch.uint8
    assert ds.y.tolist() == expected and ds.num_classes == 30


def test_location_reads_shokri_bangkok_file_with_quoted_labels(tmp_path):
    """dataset_location.tgz unpacks `bangkok`: rows '"label",f1..f446' with the label in quotes, 1..30."""
    rng = np.random.default_rng(12)
    feats = (rng.random((3, 446)) < 0.2).astype(int)
    (tmp_path / "location").mkdir()
    lines = [f'"{label}",' + ",".join(map(str, row)) for label, row in zip((30, 1, 7), feats)]
    (tmp_path / "location" / "bangkok").write_text("\n".join(lines) + "\n")
    ds = load_dataset("location", data_dir=tmp_path)
    assert ds.x.shape == (3, 446) and ds.x.dtype == torch.uint8 and ds.y.tolist() == [29, 0, 6]
    assert np.array_equal(ds.x.numpy(), feats)


@pytest.mark.parametrize("name, width", [("purchase100", 600), ("texas100", 6169)])
def test_purchase_and_texas_read_published_npz_copies(tmp_path, name, width):
    """purchase100.npz / texas100.npz (Purchase100-Texas100-datasets): features and one-hot labels;
    other copies hold X and 0-based y."""
    rng = np.random.default_rng(13)
    feats = (rng.random((3, width)) < 0.1).astype(np.int64)
    labels = np.array([0, 99, 41])
    np.savez_compressed(tmp_path / f"{name}.npz", features=feats, labels=np.eye(100, dtype=np.float32)[labels])
    ds = load_dataset(name, data_dir=tmp_path)
    assert ds.x.shape == (3, width) and ds.x.dtype == torch.uint8 and ds.y.tolist() == [0, 99, 41]
    np.savez(tmp_path / f"{name}.npz", X=feats.astype(np.float32), y=labels)
    assert load_dataset(name, data_dir=tmp_path).y.tolist() == [0, 99, 41]
    np.savez(tmp_path / f"{name}.npz", features=feats, labels=np.full((3, 100), 0.5))
    with pytest.raises(MiaError, match="not one-hot"):
        load_dataset(name, data_dir=tmp_path)


@pytest.mark.parametrize("write, message", [
    (lambda d: (d / "dataset_purchase").write_text("1,0,1\n2,0.5,1\n"), "is not comma-separated 0/1 integers"),
    (lambda d: (d / "dataset_purchase").write_text("1\n2\n"), "rows must be 'label,f1,f2,...'"),
    (lambda d: (d / "dataset_purchase").write_text("0,1,1\n101,0,1\n"), "labels in"),
    (lambda d: np.savez(d / "purchase100.npz", a=np.zeros(3), b=np.zeros(3)),
     "must hold arrays features and labels (or x and y), has a, b"),
    (lambda d: np.savez(d / "purchase100.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1)),
     "it must be an .npz of plain arrays"),
    (lambda d: (d / "purchase100.npz").write_text("not a zip"), "it must be an .npz of plain arrays"),
    (lambda d: np.savez(d / "purchase100.npz", x=np.zeros((3, 2, 2)), y=np.zeros(3)),
     "features must be N x D with one label per row; got features (3, 2, 2)"),
])
def test_a_tabular_file_in_the_wrong_format_is_a_one_line_error(tmp_path, write, message):
    write(tmp_path)
    with pytest.raises(MiaError, match=re.escape(message)) as err:
        load_dataset("purchase100", data_dir=tmp_path)
    assert "\n" not in str(err.value) and str(err.value).startswith("purchase100: ")


def test_texas100_reads_ml_privacy_meter_folder(tmp_path):
    """ML Privacy Meter keeps the two files in dataset_texas/ instead of the archive's texas/100/."""
    root = tmp_path / "dataset_texas"
    root.mkdir()
    (root / "feats").write_text("0,1,1\n1,0,0\n")
    (root / "labels").write_text("100\n1\n")
    ds = load_dataset("texas100", data_dir=tmp_path)
    assert ds.x.tolist() == [[0, 1, 1], [1, 0, 0]] and ds.y.tolist() == [99, 0]


# ---------------------------------------------------------------- downloads (no network: download_url is faked)


def tar_bytes(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def fake_download(monkeypatch):
    """Replace torchvision's download_url: serve ``archives[url]``, record every call, fail other URLs."""
    import urllib.error

    import torchvision.datasets.utils

    archives: dict[str, bytes] = {}
    calls: list[tuple] = []

    def download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
        calls.append((url, str(root), filename, md5))
        if url not in archives:
            raise urllib.error.URLError("offline")
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, filename or os.path.basename(url)), "wb") as f:
            f.write(archives[url])

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", download_url)
    return archives, calls


def test_cifar10_download_is_torchvisions(tmp_path, fake_download):
    """Same URL, file name, checksum and root as torchvision.datasets.CIFAR10(root=data_dir, download=True)."""
    from torchvision.datasets import CIFAR10

    archives, calls = fake_download
    stage = tmp_path / "stage"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        write_cifar_batch(stage / name, np.zeros((1, 3072), dtype=np.uint8), [k])
    archives[CIFAR10.url] = tar_bytes({f"cifar-10-batches-py/{n}": (stage / n).read_bytes() for n in names})
    data_dir = tmp_path / "data"
    ds = load_dataset("cifar10", data_dir=data_dir, download=True)
    assert calls == [(CIFAR10.url, str(data_dir), CIFAR10.filename, CIFAR10.tgz_md5)]
    assert ds.y.tolist() == [0, 1, 2, 3, 4, 5] and (data_dir / "cifar-10-batches-py" / "test_batch").is_file()


def test_svhn_download_is_torchvisions(tmp_path, fake_download):
    from scipy.io import savemat
    from torchvision.datasets import SVHN

    archives, calls = fake_download
    for split in ("train", "test"):
        url, filename, _ = SVHN.split_list[split]
        savemat(tmp_path / filename, {"X": np.zeros((32, 32, 3, 1), dtype=np.uint8), "y": np.array([[10]])})
        archives[url] = (tmp_path / filename).read_bytes()
        (tmp_path / filename).unlink()
    load_dataset("svhn", data_dir=tmp_path / "data", download=True)
    assert calls == [(url, str(tmp_path / "data"), filename, md5)
                     for url, filename, md5 in (SVHN.split_list["train"], SVHN.split_list["test"])]


def test_tabular_downloads_unpack_where_the_loaders_read(tmp_path, fake_download):
    """Shokri et al.'s archives: dataset_purchase at the top, texas/100/{feats,labels}, bangkok (into location/).
    A mirror that fails is followed by the next."""
    archives, calls = fake_download
    nus = "https://www.comp.nus.edu.sg/~reza/files/dataset_purchase.tgz"
    archives[nus] = tar_bytes({"dataset_purchase": b"3,0,1\n100,1,0\n"})
    texas = "https://raw.githubusercontent.com/privacytrustlab/datasets/master/dataset_texas.tgz"
    archives[texas] = tar_bytes({"texas/100/feats": b"0,1\n1,1\n", "texas/100/labels": b"2\n1\n"})
    location = "https://raw.githubusercontent.com/privacytrustlab/datasets/master/dataset_location.tgz"
    archives[location] = tar_bytes({"bangkok": b'"2",1,0\n"30",0,1\n'})
    data = tmp_path / "data"
    assert load_dataset("purchase100", data_dir=data, download=True).y.tolist() == [2, 99]
    assert [call[0] for call in calls][-1] == nus and len(calls) == 2  # the GitHub copy failed first
    assert load_dataset("texas100", data_dir=data, download=True).y.tolist() == [1, 0]
    assert load_dataset("location", data_dir=data, download=True).y.tolist() == [1, 29]
    assert (data / "location" / "bangkok").is_file() and (data / "texas" / "100" / "feats").is_file()


def test_cinic10_download_unpacks_into_cinic_10(tmp_path, fake_download):
    """CINIC-10.tar.gz from the Edinburgh DataShare, checksummed, kept in --data-dir; it has no top folder,
    so it is unpacked into cinic-10/, where the loader looks first."""
    archives, calls = fake_download
    save_image(tmp_path / "stage.png", rgb(np.random.default_rng(5), 32))
    png = (tmp_path / "stage.png").read_bytes()
    url = "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz"
    archives[url] = tar_bytes({f"{part}/{cls}/{part}-{cls}.png": png
                               for part in ("train", "valid", "test") for cls in ("airplane", "truck")})
    data = tmp_path / "data"
    ds = load_dataset("cinic10", data_dir=data, download=True)
    assert calls == [(url, str(data), "CINIC-10.tar.gz", "6ee4d0c996905fe93221de577967a372")]
    assert ds.x.shape == (6, 3, 32, 32) and ds.y.tolist() == [0, 1, 0, 1, 0, 1]
    assert (data / "cinic-10" / "valid" / "truck" / "valid-truck.png").is_file() and not (data / "train").exists()
    assert (data / "CINIC-10.tar.gz").is_file()


def test_tinyimagenet_download_unpacks_its_zip(tmp_path, fake_download):
    """cs231n's tiny-imagenet-200.zip, checksummed and unpacked into --data-dir (zip, not tar)."""
    import io
    import zipfile

    archives, calls = fake_download
    save_image(tmp_path / "stage.png", rgb(np.random.default_rng(6), 64))
    png = (tmp_path / "stage.png").read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01\nn02\n")
        for wnid in ("n01", "n02"):
            zf.writestr(f"tiny-imagenet-200/train/{wnid}/images/{wnid}_0.JPEG", png)
        zf.writestr("tiny-imagenet-200/val/images/val_0.JPEG", png)
        zf.writestr("tiny-imagenet-200/val/val_annotations.txt", "val_0.JPEG\tn02\t0\t0\t63\t63\n")
    url = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    archives[url] = buffer.getvalue()
    ds = load_dataset("tinyimagenet", data_dir=tmp_path / "data", download=True)
    assert calls == [(url, str(tmp_path / "data"), "tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")]
    assert ds.x.shape == (3, 3, 64, 64) and ds.y.tolist() == [0, 1, 1]


def test_a_download_with_no_mirror_answering_is_a_one_line_error_naming_the_file_to_fetch(tmp_path, fake_download):
    """What an offline machine gets from --download: every mirror tried, nothing half-written left behind."""
    _, calls = fake_download
    with pytest.raises(MiaError) as err:
        load_dataset("purchase100", data_dir=tmp_path, download=True)
    message = str(err.value)
    assert message.startswith("purchase100: download failed (<urlopen error offline>); fetch it by hand: ")
    assert "dataset_purchase" in message and "\n" not in message
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []  # both mirrors, no partial archive


def test_downloaded_archive_may_not_write_outside_the_data_dir(tmp_path, fake_download):
    archives, _ = fake_download
    url = "https://raw.githubusercontent.com/privacytrustlab/datasets/master/dataset_location.tgz"
    archives[url] = tar_bytes({"../escaped": b"x", "bangkok": b"1,0\n"})
    with pytest.raises(MiaError, match="refusing to unpack") as err:
        load_dataset("location", data_dir=tmp_path / "data", download=True)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "data" / "escaped").exists()
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name, missing", [
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ("cifar100", "cifar-100-python/train"),
    ("svhn", "train_32x32.mat"),
    ("cinic10", "cinic-10/train"),
    ("tinyimagenet", "tiny-imagenet-200/wnids.txt"),
    ("purchase100", "dataset_purchase"),
    ("texas100", "texas/100/feats"),
    ("location", "location/bangkok"),
])
def test_missing_files_name_the_path(tmp_path, name, missing):
    with pytest.raises(MiaError) as err:
        load_dataset(name, data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / missing) in message and "\n" not in message
    if name != "imagefolder":
        assert "--download" in message


def test_imagefolder_missing_folder(tmp_path):
    with pytest.raises(MiaError, match="missing .*nowhere"):
        load_dataset("imagefolder", data_dir=tmp_path / "nowhere")


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(MiaError, match="unknown dataset 'mnist'.*cifar10.*digits"):
        load_dataset("mnist")


def test_unknown_and_bad_params():
    with pytest.raises(MiaError, match="no parameter 'rows'; known: classes, features, n, seed"):
        load_dataset("purchase-synth", rows=10)
    with pytest.raises(MiaError, match="n='many' is not a valid int"):
        load_dataset("purchase-synth", n="many")
    with pytest.raises(MiaError, match="takes no parameters \\(got 'size'\\)"):
        load_dataset("digits", size=3)


def test_every_spec_is_documented():
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.description and spec.files and spec.default_model
        assert spec.kind in ("image", "tabular")


# ---------------------------------------------------------------- offline datasets


def test_digits():
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset)
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == torch.uint8 and int(ds.x.max()) == 255
    assert ds.num_classes == 10 and not ds.augment and len(ds.mean) == 1
    assert DATASETS.get("digits").default_model == "mlp"


def test_purchase_synth_shape_and_seed():
    a = load_dataset("purchase-synth", n=3000, seed=1)
    b = load_dataset("purchase-synth", n="3000", seed="1")
    c = load_dataset("purchase-synth", n=3000, seed=2)
    assert a.x.shape == (3000, 600) and a.x.dtype == torch.uint8 and a.num_classes == 100
    assert set(a.x.unique().tolist()) == {0, 1}
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    small = load_dataset("purchase-synth", n=50, features=20, classes=5)
    assert small.x.shape == (50, 20) and small.y.max() < 5


def test_purchase_synth_is_learnable_but_memorization_does_not_generalize():
    from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

    ds = load_dataset("purchase-synth", n=4000, seed=3)
    x, y = ds.x.numpy(), ds.y.numpy()
    centroid = NearestCentroid().fit(x[:2000], y[:2000]).score(x[2000:], y[2000:])
    assert 0.3 < centroid < 0.97  # chance is 0.01: real structure, but not separable at a glance
    memorizer = KNeighborsClassifier(1).fit(x[:2000], y[:2000])
    assert memorizer.score(x[:2000], y[:2000]) == 1.0
    assert memorizer.score(x[2000:], y[2000:]) < 0.6  # the train/test gap membership inference feeds on


# ---------------------------------------------------------------- splits


def test_split_is_a_disjoint_cover():
    s = make_split(1000, seed=0)
    sets = [s.members, s.nonmembers, s.validation, s.population]
    assert [len(a) for a in sets] == [250, 250, 100, 400]
    everything = np.concatenate(sets)
    assert np.array_equal(np.sort(everything), np.arange(1000))
    assert all(a.dtype == np.int64 for a in sets)
    s.check(1000)


def test_split_reproducible_and_seed_dependent():
    np.random.seed(123)
    a = make_split(500, seed=7)
    np.random.seed(456)
    b = make_split(500, seed=7)
    c = make_split(500, seed=8)
    assert np.array_equal(a.members, b.members) and np.array_equal(a.population, b.population)
    assert not np.array_equal(a.members, c.members)


def test_max_members_moves_surplus_to_population():
    full = make_split(1000, seed=1)
    capped = make_split(1000, seed=1, config=SplitConfig(max_members=100))
    assert len(capped.members) == 100 and len(capped.population) == 550
    assert np.array_equal(full.nonmembers, capped.nonmembers)
    assert np.array_equal(full.validation, capped.validation)
    assert set(capped.members) <= set(full.members)
    capped.check(1000)


def test_query_is_balanced_and_deterministic():
    s = make_split(1000, seed=2, config=SplitConfig(member_fraction=0.4, nonmember_fraction=0.2))
    idx, is_member = s.query()
    assert is_member.dtype == bool and is_member.sum() == (~is_member).sum() == 200
    assert set(idx[is_member]) <= set(s.members)
    assert np.array_equal(np.sort(idx[~is_member]), s.nonmembers)
    idx2, _ = s.query()
    assert np.array_equal(idx, idx2)
    # the 200 of 400 members are drawn at random, not the lowest indices (datasets stored class by
    # class would otherwise audit some classes only)
    chosen = idx[is_member]
    assert not np.array_equal(chosen, s.members[:200])
    assert np.median(chosen) > np.quantile(s.members, 0.35)


def test_split_save_load_round_trip(tmp_path):
    s = make_split(300, seed=3)
    path = tmp_path / "split.npz"
    s.save(path)
    t = Split.load(path).check(300)
    assert t.seed == 3
    for name in ("members", "nonmembers", "validation", "population"):
        assert np.array_equal(getattr(s, name), getattr(t, name))
    with pytest.raises(MiaError, match="another dataset"):
        t.check(100)
    with pytest.raises(MiaError, match="another dataset"):  # index n is already outside n rows
        t.check(int(max(getattr(t, name).max() for name in ("members", "nonmembers", "validation", "population"))))


def test_split_check_detects_overlap_and_bad_files(tmp_path):
    bad = Split(np.array([0, 1]), np.array([1, 2]), np.array([3]), np.array([4]), seed=0)
    with pytest.raises(MiaError, match="overlap"):
        bad.check(10)
    with pytest.raises(MiaError, match="not found"):
        Split.load(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(MiaError, match="not a split file"):
        Split.load(tmp_path / "other.npz")


@pytest.mark.parametrize("kwargs", [dict(member_fraction=0.0), dict(nonmember_fraction=1.2),
                                    dict(member_fraction=0.5, nonmember_fraction=0.5),
                                    dict(max_members=0)])
def test_split_config_validation(kwargs):
    with pytest.raises(MiaError):
        SplitConfig(**kwargs)


def test_too_few_rows():
    with pytest.raises(MiaError, match="too few"):
        make_split(5, seed=0)


@pytest.mark.parametrize("x, y, kind, classes, match", [
    (torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), "image", 2,
     "must be uint8 N x C x H x W.*scale images to 0..255"),
    (torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), "image", 2,
     "got torch.uint8 of shape \\(4, 8, 8\\)"),
    (torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long), "tabular", 2, "tabular features must be N x D"),
    (torch.zeros(4, 5), torch.zeros(3, dtype=torch.long), "tabular", 2, "4 rows but 3 labels"),
    (torch.zeros(4, 5), torch.tensor([0.0, 1.0, 0.0, 1.0]), "tabular", 2, "1-D integer tensor"),
    (torch.zeros(4, 5), torch.tensor([0, 1, 2, 1]), "tabular", 2, "labels must lie in 0..num_classes-1 = 0..1"),
    (torch.zeros(4, 5), torch.tensor([1, 2, 1, 2]), "tabular", 2, "0..1"),  # 1-based labels
    (torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), "text", 2, "kind must be 'image' or 'tabular'"),
])
def test_a_dataset_of_the_wrong_form_is_a_one_line_error(x, y, kind, classes, match):
    """What a user's own loader (MIA_PLUGINS) returns is checked: float images in [0, 1] were divided by 255
    again, 1-based labels broke the loss deep in training."""
    with pytest.raises(MiaError, match=match) as err:
        Dataset("mine", x, y, classes, kind)
    assert "\n" not in str(err.value)


def test_a_dataset_shows_its_shape_not_its_tensors():
    """A notebook echoing anything that holds the data (``train_run``'s outcome) printed every pixel."""
    data = load_dataset("digits", None, False)
    assert repr(data) == "Dataset('digits': 1797 image rows of 1x8x8 uint8, 10 classes, on cpu)"
