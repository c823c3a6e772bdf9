"""Dataset readers (CIFAR-10, Fashion-MNIST, imagefolder), class subsets and per-class caps, on tiny fake copies."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlab.core.errors import PipelineError
from petlab.core.params import DataParams, ParamsError, parse_params
from petlab.prepare.sources import Record, SourceSplits
from petlab.prepare.sources.cifar10 import read_cifar10
from petlab.prepare.sources.fashion_mnist import FASHION_MNIST_CLASSES, read_fashion_mnist, read_idx
from petlab.prepare.sources.imagefolder import read_imagefolder
from petlab.prepare.splits import cap_per_class, prepare_dataset, select_classes
from petlab.prepare.synthetic import class_image

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder: Path, train_per_class: int = 6, test_per_class: int = 3, gz: bool = True) -> Path:
    """The four idx files; each image is filled with its label * 20, so labels can be checked from pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), n)
        images = np.broadcast_to(labels[:, None, None] * 20, (len(labels), 28, 28))
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


def fake_cifar10(root: Path, per_batch_per_class: int = 2) -> Path:
    """cifar-10-batches-py/ with its pickles; each image's red channel is its label * 20."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.repeat(np.arange(10), per_batch_per_class)
        data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        data[:, 0] = labels[:, None, None] * 20
        with open(base / name, "wb") as f:
            pickle.dump({"data": data.reshape(len(labels), -1), "labels": labels.tolist()}, f)
    return root


def fake_imagefolder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name / "nested").mkdir(parents=True)
        for i in range(per_class):
            folder = root / name / ("nested" if i % 4 == 0 else "")
            class_image(label, len(classes), rng, (40, 48)).convert("L" if i % 3 == 0 else "RGB").save(
                folder / f"img{i}.png"
            )
        (root / name / "notes.txt").write_text("not an image")
    return root


def test_read_idx_plain_and_gzipped(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"abc")
    with pytest.raises(PipelineError, match="truncated"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("layout", ["flat_gz", "torchvision_raw", "flat_plain"])
def test_read_fashion_mnist_local_copy(tmp_path, layout):
    folder = {"flat_gz": tmp_path, "torchvision_raw": tmp_path / "FashionMNIST" / "raw", "flat_plain": tmp_path}[layout]
    fake_fashion_mnist(folder, gz=layout != "flat_plain")
    source = read_fashion_mnist(DataParams(dataset="fashion_mnist", root=str(tmp_path)), seed=0)
    assert source.class_names == FASHION_MNIST_CLASSES
    assert (len(source.trainval), len(source.test)) == (60, 30)
    for r in source.trainval + source.test:
        assert r.pixels.shape == (28, 28) and r.pixels[0, 0] == r.label * 20


def test_read_fashion_mnist_names_what_is_missing(tmp_path):
    with pytest.raises(PipelineError, match="not a Fashion-MNIST copy"):
        read_fashion_mnist(DataParams(dataset="fashion_mnist", root=str(tmp_path)), seed=0)


def test_read_cifar10_local_copy(tmp_path):
    source = read_cifar10(DataParams(dataset="cifar10", root=str(fake_cifar10(tmp_path))), seed=0)
    assert source.class_names == CIFAR_NAMES
    assert (len(source.trainval), len(source.test)) == (100, 20)
    for r in source.trainval + source.test:
        assert r.pixels.shape == (32, 32, 3) and r.pixels[5, 5, 0] == r.label * 20 and r.pixels[..., 1:].max() == 0
    with pytest.raises(PipelineError, match="not a CIFAR-10 copy"):
        read_cifar10(DataParams(dataset="cifar10", root=str(tmp_path / "elsewhere")), seed=0)


def test_read_imagefolder_splits_by_fraction_and_seed(tmp_path):
    root = fake_imagefolder(tmp_path / "folder")
    data = DataParams(dataset="imagefolder", root=str(root), test_fraction=0.2)
    source = read_imagefolder(data, seed=1)
    assert source.class_names == ["cat", "dog", "fox"]
    assert Counter(r.label for r in source.test) == {0: 2, 1: 2, 2: 2}
    assert Counter(r.label for r in source.trainval) == {0: 8, 1: 8, 2: 8}
    assert all(r.path.suffix == ".png" for r in source.trainval + source.test)  # notes.txt is no image
    assert {r.image_id for r in source.test + source.trainval if r.label == 0} >= {"nested__img0", "img1"}
    again = read_imagefolder(data, seed=1)
    assert [r.path for r in again.test] == [r.path for r in source.test]
    other = read_imagefolder(data, seed=2)
    assert {r.path for r in other.test} != {r.path for r in source.test}


@pytest.mark.parametrize(
    "pair",
    [("caf\u00e9", "cafe\u0301"), ("Dog", "dog"), ("Stra\u00dfe", "STRASSE")],
    ids=["nfc_and_nfd", "case", "case_folding"],
)
def test_class_folders_one_file_system_would_store_as_one_are_refused_naming_both(tmp_path, pair):
    """'caf\u00e9' as one code point and as 'e' plus a combining accent print alike and are one name on macOS."""
    from petlab.prepare.splits import prepare_dataset

    root = fake_imagefolder(tmp_path / "folder", classes=("cat", *pair), per_class=5)
    first, second = sorted(pair)
    shown = [repr(n) if n.isascii() else f"{n!r} ({ascii(n)})" for n in (first, second)]
    message = (
        rf"imagefolder \({root}\): class names {re.escape(shown[0])} and {re.escape(shown[1])} are one name: "
        r"equal once Unicode-normalised \(NFC\) and case-folded"
    )
    with pytest.raises(PipelineError, match=message):
        prepare_dataset(DataParams(dataset="imagefolder", root=str(root)), seed=0, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_image_names_one_file_system_would_store_as_one_get_distinct_output_names():
    from petlab.prepare.sources.base import unique_ids

    records = [Record(Path(f"/a/{name}.jpg"), name, 0) for name in ("caf\u00e9", "cafe\u0301", "Cafe\u0301", "other")]
    ids = [r.image_id for r in unique_ids(records)]
    assert len({i.casefold() for i in ids}) == 4 and ids[3] == "other"
    assert all(i.startswith(r.image_id + "-") for i, r in zip(ids[:3], records))


def test_read_imagefolder_rejects_too_few_images(tmp_path):
    root = fake_imagefolder(tmp_path / "folder", per_class=2)
    with pytest.raises(PipelineError, match="at least 3"):
        read_imagefolder(DataParams(dataset="imagefolder", root=str(root)), seed=0)


def toy_source(per_class=(10, 10, 10), test=3) -> SourceSplits:
    trainval = [Record(Path(f"{c}_{i}.jpg"), f"{c}_{i}", c) for c, n in enumerate(per_class) for i in range(n)]
    test_records = [Record(Path(f"t{c}_{i}.jpg"), f"t{c}_{i}", c) for c in range(len(per_class)) for i in range(test)]
    return SourceSplits(trainval, test_records, ["a", "b", "c"], "toy")


def test_select_classes_relabels_in_the_given_order():
    source = select_classes(toy_source(), ["c", "a"])
    assert source.class_names == ["c", "a"]
    assert {(r.image_id.split("_")[0], r.label) for r in source.trainval} == {("2", 0), ("0", 1)}
    assert len(source.test) == 6
    assert select_classes(toy_source(), None).class_names == ["a", "b", "c"]
    with pytest.raises(PipelineError, match=r"no class\(es\) \['z'\].*its classes: a, b, c"):
        select_classes(toy_source(), ["a", "z"])


def test_cap_per_class_is_stratified_and_seeded():
    records = toy_source(per_class=(10, 4, 7)).trainval
    capped = cap_per_class(records, 5, seed=0)
    assert Counter(r.label for r in capped) == {0: 5, 1: 4, 2: 5}
    assert capped == cap_per_class(list(reversed(records)), 5, seed=0)  # the draw does not depend on input order
    assert capped != cap_per_class(records, 5, seed=1)
    assert cap_per_class(records, None, seed=0) is records


def test_prepare_dataset_fashion_mnist_subset_to_rgb_layout(tmp_path):
    root = fake_fashion_mnist(tmp_path / "fmnist", train_per_class=20, test_per_class=8)
    data = DataParams(
        dataset="fashion_mnist",
        root=str(root),
        classes=["Bag", "Trouser", "Sneaker"],
        per_class=10,
        test_per_class=4,
        val_fraction=0.2,
    )
    out = tmp_path / "prepared"
    report = prepare_dataset(data, seed=0, out_dir=out)
    assert json.loads((out / "classes.json").read_text()) == ["Bag", "Trouser", "Sneaker"]
    assert report["counts"] == {
        "train": {"Bag": 8, "Sneaker": 8, "Trouser": 8},
        "val": {"Bag": 2, "Sneaker": 2, "Trouser": 2},
        "test": {"Bag": 4, "Sneaker": 4, "Trouser": 4},
    }
    assert report["converted_to_rgb"] == {"PNG L": 42}
    for name, label in (("Bag", 8), ("Trouser", 1), ("Sneaker", 7)):
        for path in (out / "train" / name).iterdir():
            with Image.open(path) as image:
                assert image.format == "JPEG" and image.mode == "RGB" and image.size == (28, 28)
                assert abs(int(np.asarray(image)[14, 14, 0]) - label * 20) <= 3  # JPEG is lossy, not that lossy


def test_prepare_dataset_cifar10_and_imagefolder(tmp_path):
    cifar = DataParams(dataset="cifar10", root=str(fake_cifar10(tmp_path / "cifar")), classes=["cat", "dog"])
    report = prepare_dataset(cifar, seed=0, out_dir=tmp_path / "out_cifar")
    assert report["counts"]["test"] == {"cat": 2, "dog": 2}
    assert sum(report["counts"]["train"].values()) + sum(report["counts"]["val"].values()) == 20
    assert report["converted_to_rgb"] == {"PNG RGB": 24}

    folder = DataParams(dataset="imagefolder", root=str(fake_imagefolder(tmp_path / "folder")), per_class=6)
    report = prepare_dataset(folder, seed=0, out_dir=tmp_path / "out_folder")
    assert report["counts"]["test"] == {"cat": 2, "dog": 2, "fox": 2}
    assert {sum(report["counts"][s][c] for s in ("train", "val")) for c in ("cat", "dog", "fox")} == {6}
    assert (tmp_path / "out_folder" / "train" / "cat").is_dir()


def test_data_params_checks():
    assert parse_params({"data": {"dataset": "cifar10"}}).data.dataset == "cifar10"
    with pytest.raises(ParamsError, match="data.dataset"):
        parse_params({"data": {"dataset": "mnist"}})
    with pytest.raises(ParamsError, match="data.root"):
        parse_params({"data": {"dataset": "imagefolder"}})
    with pytest.raises(ParamsError, match="data.classes"):
        parse_params({"data": {"classes": ["Bag"]}})
    with pytest.raises(ParamsError, match="data.per_class"):
        parse_params({"data": {"per_class": 1}})
    with pytest.raises(ParamsError, match="data.test_fraction"):
        parse_params({"data": {"test_fraction": 1.0}})


def test_downloads_go_through_torchvision_and_read_its_layout(tmp_path, monkeypatch):
    """torchvision downloads and verifies the files; the readers then read torchvision's folders."""
    import torchvision.datasets

    def fake_fashion(root, train, download):
        assert download
        fake_fashion_mnist(Path(root) / "FashionMNIST" / "raw")

    def fake_cifar(root, train, download):
        assert download
        fake_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar)
    fashion = read_fashion_mnist(DataParams(dataset="fashion_mnist", download_dir=str(tmp_path / "a")), seed=0)
    assert len(fashion.trainval) == 60 and str(tmp_path / "a" / "FashionMNIST" / "raw") in fashion.origin
    cifar = read_cifar10(DataParams(dataset="cifar10", download_dir=str(tmp_path / "b")), seed=0)
    assert len(cifar.test) == 20


def test_a_failed_download_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(PipelineError, match="could not download Fashion-MNIST.*set data.root"):
        read_fashion_mnist(DataParams(dataset="fashion_mnist", download_dir=str(tmp_path)), seed=0)


# ---------------------------------------------------------------- image folders: links, hidden files, name clashes


def outside_images(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        class_image(0, 3, np.random.default_rng(i), (40, 48)).save(folder / f"stray{i}.png")
    return folder


def link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


# case -> (make the oddity under root (tmp is outside root); return the path planted, its reason)
IMAGE_FOLDER_ODDITIES = {
    "file_link_to_outside": (
        lambda root, tmp: link(root / "cat" / "stray.png", outside_images(tmp / "out") / "stray0.png"),
        r"^symlink to .*stray0\.png, outside data\.root \(set data\.follow_symlinks: true",
    ),
    "class_link_to_outside": (
        lambda root, tmp: link(root / "wolf", outside_images(tmp / "out")),
        r"^symlink to .*/out, outside data\.root",
    ),
    "nested_link_to_outside": (
        lambda root, tmp: link(root / "dog" / "more", outside_images(tmp / "out")),
        r"^symlink to .*/out, outside data\.root",
    ),
    "dangling_link": (lambda root, tmp: link(root / "fox" / "gone.png", tmp / "nothing.png"), r"^dangling symlink"),
    "hidden_class_folder": (lambda root, tmp: outside_images(root / ".thumbnails"), r"^hidden"),
    "hidden_file": (
        lambda root, tmp: (
            shutil.copy(root / "cat" / "img1.png", root / "cat" / ".img1.png") and root / "cat" / ".img1.png"
        ),
        r"^hidden",
    ),
    "link_loop": (
        lambda root, tmp: link(root / "cat" / "nested" / "again", root / "cat"),
        r"^folder already read as .*/cat \(a symlink to it\)",
    ),
    "link_to_a_file_inside": (
        lambda root, tmp: link(root / "dog" / "zz_copy.png", root / "dog" / "img1.png"),
        r"^the same file as .*dog/img1\.png \(taken once\)",
    ),
    "file_outside_any_class": (
        lambda root, tmp: shutil.copy(root / "cat" / "img1.png", root / "loose.png") and root / "loose.png",
        r"^not inside a class folder",
    ),
    "not_an_image_name": (
        lambda root, tmp: root / "cat" / "notes.txt",
        r"^not an image file name \(extension '\.txt'\)",
    ),
    "file_name_not_utf8": (
        lambda root, tmp: copy_to_bytes_name(root / "cat" / "img1.png", root / "cat", b"caf\xe9.png"),
        r"^its name is not valid UTF-8",
    ),
    "class_folder_not_utf8": (
        lambda root, tmp: outside_images(root / os.fsdecode(b"ni\xf1o")),
        r"^its name is not valid UTF-8",
    ),
}


def copy_to_bytes_name(src: Path, folder: Path, name: bytes) -> Path:
    """A copy of `src` whose file name is the given bytes (Latin-1 from an old disk, say): not UTF-8."""
    target = os.path.join(os.fsencode(folder), name)
    shutil.copy(os.fsencode(src), target)
    return Path(os.fsdecode(target))


@pytest.mark.parametrize("case", IMAGE_FOLDER_ODDITIES)
def test_image_folder_oddities_are_left_out_with_their_reason(tmp_path, case):
    make, reason = IMAGE_FOLDER_ODDITIES[case]
    root = fake_imagefolder(tmp_path / "folder")
    planted = make(root, tmp_path)
    source = read_imagefolder(DataParams(dataset="imagefolder", root=str(root)), seed=0)
    left_out = {entry["file"]: entry["reason"] for entry in source.left_out}
    printable = os.fsencode(planted).decode("utf-8", "backslashreplace")  # how the report names a non-UTF-8 name
    assert re.search(reason, left_out[printable]), left_out
    json.dumps(source.left_out, ensure_ascii=False).encode("utf-8")  # writable as UTF-8 text
    assert source.class_names == ["cat", "dog", "fox"]
    taken = [r.path for r in source.trainval + source.test]
    assert len(taken) == 30 and all(p.resolve().is_relative_to(root.resolve()) for p in taken)
    assert str(planted) not in map(str, taken)


def test_links_to_outside_are_read_when_allowed(tmp_path):
    root = fake_imagefolder(tmp_path / "folder")
    link(root / "wolf", outside_images(tmp_path / "out"))
    link(root / "cat" / "stray.png", outside_images(tmp_path / "single", n=1) / "stray0.png")
    data = DataParams(dataset="imagefolder", root=str(root), follow_symlinks=True, test_fraction=0.25)
    source = read_imagefolder(data, seed=0)
    assert source.class_names == ["cat", "dog", "fox", "wolf"]
    assert len(source.trainval + source.test) == 30 + 4 + 1


def test_nested_files_with_clashing_names_are_all_prepared(tmp_path):
    """'a/b.png', 'a__b.png', 'B.png' beside 'b.png' and 'x.png' beside 'x.jpg': none may overwrite another."""
    root = fake_imagefolder(tmp_path / "folder", per_class=6)
    for name in ("cat", "dog", "fox"):
        (root / name / "a").mkdir()
        for rel in ("a/b.png", "a__b.png", "b.png", "B.png", "x.png", "x.jpg"):
            shutil.copy(root / name / "img1.png", root / name / rel)
    report = prepare_dataset(
        DataParams(dataset="imagefolder", root=str(root), test_fraction=0.25), seed=0, out_dir=tmp_path / "out"
    )
    on_disk = Counter(p.parent.name for p in (tmp_path / "out").glob("*/*/*.jpg"))
    assert report["images_written"] == 3 * 12 == sum(on_disk.values())
    for name in ("cat", "dog", "fox"):
        assert sum(report["counts"][split][name] for split in ("train", "val", "test")) == on_disk[name] == 12


def test_report_counts_are_checked_against_the_files_written(tmp_path):
    from petlab.prepare.splits import check_counts_on_disk

    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "a.jpg").write_bytes(b"x")
    check_counts_on_disk(tmp_path, {"train": {"cat": 1}})
    with pytest.raises(PipelineError, match=r"prepare wrote 1 file\(s\) to train/cat but converted 2 images"):
        check_counts_on_disk(tmp_path, {"train": {"cat": 2}})


def test_test_fraction_too_small_for_the_classes_names_it(tmp_path):
    root = fake_imagefolder(tmp_path / "folder", per_class=4)
    with pytest.raises(
        PipelineError,
        match=r"data\.test_fraction = 0\.1 splits 12 .* images into 10 and 2; with 3 "
        r"classes",
    ):
        read_imagefolder(DataParams(dataset="imagefolder", root=str(root), test_fraction=0.1), seed=0)


# ---------------------------------------------------------------- the other datasets' label files


def rewrite_pickle(path: Path, change) -> None:
    with open(path, "rb") as f:
        content = pickle.load(f)
    change(content)
    with open(path, "wb") as f:
        pickle.dump(content, f)


CIFAR_DAMAGE = {
    "label_out_of_range": (
        lambda base: rewrite_pickle(base / "data_batch_2", lambda b: b["labels"].__setitem__(0, 10)),
        r"data_batch_2: 20 images and 20 labels, labels must be 0\.\.9",
    ),
    "negative_label": (
        lambda base: rewrite_pickle(base / "test_batch", lambda b: b["labels"].__setitem__(3, -1)),
        r"test_batch: 20 images and 20 labels",
    ),
    "fewer_labels": (
        lambda base: rewrite_pickle(base / "data_batch_1", lambda b: b["labels"].pop()),
        r"data_batch_1: 20 images and 19 labels",
    ),
    "two_ids_one_name": (
        lambda base: rewrite_pickle(base / "batches.meta", lambda m: m["label_names"].__setitem__(3, "dog")),
        r"class name 'dog' given to more than one class id",
    ),
    "name_with_a_slash": (
        lambda base: rewrite_pickle(base / "batches.meta", lambda m: m["label_names"].__setitem__(0, "air/plane")),
        r"class name 'air/plane' of cifar10 .* cannot be a folder name",
    ),
    "not_a_pickle": (
        lambda base: (base / "data_batch_3").write_bytes(b"\xff\x00garbage"),
        r"data_batch_3: cannot be read as a CIFAR-10 pickle",
    ),
}


@pytest.mark.parametrize("case", CIFAR_DAMAGE)
def test_damaged_cifar10_label_files_are_named(tmp_path, case):
    damage, message = CIFAR_DAMAGE[case]
    root = fake_cifar10(tmp_path / "cifar")
    damage(root / "cifar-10-batches-py")
    with pytest.raises(PipelineError, match=message):
        prepare_dataset(DataParams(dataset="cifar10", root=str(root)), seed=0, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fashion_mnist_label_out_of_range_is_named(tmp_path):
    root = fake_fashion_mnist(tmp_path / "fmnist", gz=False)
    write_idx(root / "t10k-labels-idx1-ubyte", np.full(30, 10))
    with pytest.raises(PipelineError, match=r"t10k-images-idx3-ubyte, .*t10k-labels-idx1-ubyte: .* labels in 0\.\.9"):
        read_fashion_mnist(DataParams(dataset="fashion_mnist", root=str(root)), seed=0)
