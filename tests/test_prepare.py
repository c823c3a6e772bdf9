"""Preparing a dataset: bad images counted or listed, bad trees refused with the path, nothing half-written."""

import errno
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter, namedtuple
from pathlib import Path

import pytest
from conftest import make_project
from PIL import Image
from test_runtime import start_as_in_a_terminal

from petlab.core.errors import PipelineError
from petlab.core.params import DataParams
from petlab.prepare import splits as prepare
from petlab.prepare.sources import oxford_pets
from petlab.prepare.sources.oxford_pets import LOCAL_COPY_HELP, locate_oxford_pets, pets_class_name
from petlab.prepare.splits import prepare_oxford_pets
from petlab.prepare.synthetic import AWKWARD_IMAGES, make_fake_pets, write_awkward_image


def test_class_names_follow_torchvision():
    assert pets_class_name("american_pit_bull_terrier_12") == "American Pit Bull Terrier"
    assert pets_class_name("Abyssinian_100") == "Abyssinian"


def test_local_copy_is_found_as_the_folder_or_its_parent(fake_pets):
    assert locate_oxford_pets(DataParams(root=str(fake_pets))) == fake_pets
    assert locate_oxford_pets(DataParams(root=str(fake_pets.parent))) == fake_pets


def test_failed_download_says_how_to_supply_a_local_copy(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "OxfordIIITPet", offline)
    with pytest.raises(PipelineError) as err:
        locate_oxford_pets(DataParams(root=None, download_dir=str(tmp_path / "raw")))
    assert "could not download Oxford-IIIT Pet" in str(err.value) and LOCAL_COPY_HELP in str(err.value)


def test_prepared_layout_split_and_report(fake_pets, tmp_path):
    out = tmp_path / "prepared"
    report = prepare_oxford_pets(DataParams(root=str(fake_pets), val_fraction=0.25, max_side=64), seed=1, out_dir=out)
    classes = json.loads((out / "classes.json").read_text())
    assert len(classes) == 4
    per_split = {s: Counter(p.parent.name for p in (out / s).glob("*/*.jpg")) for s in ("train", "val", "test")}
    # Stratified: 12 trainval images per class split 9/3, the official test split untouched.
    assert all(per_split["train"][c] == 9 and per_split["val"][c] == 3 and per_split["test"][c] == 5 for c in classes)
    names = {s: {p.name for p in (out / s).glob("*/*.jpg")} for s in ("train", "val", "test")}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert report["images_written"] == 68 and report["images_skipped"] == 0
    assert report["max_side"] == 64
    from PIL import Image

    for path in out.glob("*/*/*.jpg"):
        with Image.open(path) as image:
            assert min(image.size) == 64 and image.mode == "RGB"


def test_split_is_seeded(fake_pets):
    source = oxford_pets.read_pets_annotations(fake_pets)
    a = prepare.split_train_val(source.trainval, 0.25, 7, source.class_names)
    b = prepare.split_train_val(source.trainval, 0.25, 7, source.class_names)
    c = prepare.split_train_val(source.trainval, 0.25, 8, source.class_names)
    assert a == b and a != c


UNUSABLE = [k for k, usable in AWKWARD_IMAGES.items() if not usable]


def small_pets(root: Path) -> Path:
    return make_fake_pets(
        root, num_classes=3, trainval_per_class=12, test_per_class=3, size_range=(40, 64), awkward_files=False
    )


def image_ids(root: Path, split: str) -> list[str]:
    return [line.split()[0] for line in (root / "annotations" / f"{split}.txt").read_text().splitlines()]


@pytest.fixture
def messy_pets(tmp_path) -> tuple[Path, dict[str, str]]:
    """Every awkward kind once, spread over the classes (trainval), one more in test; returns {image_id: kind}."""
    root = small_pets(tmp_path / "pets")
    trainval = image_ids(root, "trainval")
    kinds = {}
    for i, kind in enumerate(AWKWARD_IMAGES):
        image_id = trainval[(i % 3) * 12 + i // 3]  # class i % 3
        write_awkward_image(root / "images" / f"{image_id}.jpg", kind, seed=i)
        kinds[image_id] = kind
    write_awkward_image(root / "images" / f"{image_ids(root, 'test')[0]}.jpg", "rgba_png")
    kinds[image_ids(root, "test")[0]] = "rgba_png"
    return root, kinds


def run_prepare(root: Path, out: Path, **data) -> dict:
    return prepare.prepare_oxford_pets(DataParams(root=str(root), **{"max_bad_fraction": 0.2, **data}), 0, out)


def test_bad_images_are_converted_or_listed_never_dropped_silently(messy_pets, tmp_path):
    root, kinds = messy_pets
    report = run_prepare(root, tmp_path / "out")
    total = len(image_ids(root, "trainval")) + len(image_ids(root, "test"))
    assert report["images_written"] + report["images_skipped"] == total
    skipped = {Path(s["file"]).stem: s["reason"] for s in report["skipped"]}
    assert sorted(kinds[i] for i in skipped) == sorted(UNUSABLE)
    assert all(skipped.values())
    assert report["converted_to_rgb"] == {
        "GIF P": 1,
        "JPEG CMYK": 1,
        "JPEG L": 1,
        "PNG I;16": 1,
        "PNG P": 1,
        "PNG RGB": 1,
        "PNG RGBA": 2,
    }
    written = sorted((tmp_path / "out").glob("*/*/*.jpg"))
    assert len(written) == report["images_written"]
    assert not {p.stem for p in written} & set(skipped)
    for path in written:
        with Image.open(path) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")


def test_on_bad_image_fail_stops_and_leaves_previous_output(messy_pets, tmp_path):
    root, kinds = messy_pets
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("old")
    with pytest.raises(PipelineError, match="data.on_bad_image = 'fail'") as err:
        run_prepare(root, out, on_bad_image="fail")
    for image_id, kind in kinds.items():
        assert (f"{image_id}.jpg" in str(err.value)) == (kind in UNUSABLE)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half-built left beside it


def test_too_many_bad_images_fail_even_when_skipping(messy_pets, tmp_path):
    root, _ = messy_pets
    with pytest.raises(PipelineError, match=r"4 of 45 images are unusable .*data.max_bad_fraction"):
        run_prepare(root, tmp_path / "out", max_bad_fraction=0.05)
    assert not (tmp_path / "out").exists()


def test_a_class_emptied_by_skipping_is_an_error(tmp_path):
    root = small_pets(tmp_path / "pets")
    first_class_test = [i for i in image_ids(root, "test") if i.startswith("Abyssinian")]
    for image_id in first_class_test:
        write_awkward_image(root / "images" / f"{image_id}.jpg", "zero_bytes")
    with pytest.raises(PipelineError, match=r"split 'test' has no usable image of class\(es\) \['Abyssinian'\]"):
        run_prepare(root, tmp_path / "out", max_bad_fraction=0.5)


# ---------------------------------------------------------------- bad dataset trees


def test_missing_annotation_file_names_it(tmp_path):
    root = small_pets(tmp_path / "pets")
    (root / "annotations" / "test.txt").unlink()
    with pytest.raises(PipelineError, match=f"{root / 'annotations' / 'test.txt'}: annotation file missing"):
        run_prepare(root, tmp_path / "out")


def test_annotation_naming_a_missing_image_names_both(tmp_path):
    root = small_pets(tmp_path / "pets")
    gone = root / "images" / f"{image_ids(root, 'trainval')[5]}.jpg"
    gone.unlink()
    with pytest.raises(PipelineError, match=f"trainval.txt:6: names image .* but {gone} does not exist"):
        run_prepare(root, tmp_path / "out")


def drop_class(root: Path, split: str, class_id: int) -> None:
    ann = root / "annotations" / f"{split}.txt"
    ann.write_text("".join(line + "\n" for line in ann.read_text().splitlines() if line.split()[1] != str(class_id)))


def test_an_empty_class_is_named(tmp_path):
    root = small_pets(tmp_path / "pets")
    for split in ("trainval", "test"):
        drop_class(root, split, 2)
    with pytest.raises(PipelineError, match=rf"{root / 'annotations'}: class ids \[2\] have no images"):
        run_prepare(root, tmp_path / "out")


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_a_class_missing_from_one_split_is_named(tmp_path, split):
    root = small_pets(tmp_path / "pets")
    drop_class(root, split, 3)
    with pytest.raises(
        PipelineError,
        match=rf"{root / 'annotations' / f'{split}.txt'}: no images of class\(es\) "
        r"\['Bengal'\]",
    ):
        run_prepare(root, tmp_path / "out")


@pytest.mark.parametrize("where", ["empty", "images", "missing"])
def test_data_root_at_the_wrong_folder_is_named(tmp_path, where):
    root = small_pets(tmp_path / "pets")
    wrong = {"empty": tmp_path / "empty", "images": root / "images", "missing": tmp_path / "nope"}[where]
    if where == "empty":
        wrong.mkdir()
    with pytest.raises(PipelineError, match=f"data.root = '{wrong}' is not an Oxford-IIIT Pet copy"):
        run_prepare(wrong, tmp_path / "out")


# ---------------------------------------------------------------- annotation lines, field by field


def edit_line(root: Path, split: str, lineno: int | None, new: bytes | str) -> None:
    """Replace line `lineno` (1-based) of annotations/<split>.txt, or add `new` at the end (lineno None)."""
    ann = root / "annotations" / f"{split}.txt"
    lines = ann.read_bytes().splitlines()
    new = new.encode() if isinstance(new, str) else new
    if lineno is None:
        lines.append(new)
    else:
        lines[lineno - 1] = new
    ann.write_bytes(b"\n".join(lines) + b"\n")


# case -> (file, line number to replace (None: a line added at the end), the new line, the error after file:line)
BAD_ANNOTATIONS = {
    "non_utf8_bytes": ("trainval", 3, b"Abyssinian_3 1 1 3 \xff", r"not UTF-8 text \(byte 0xff\)"),
    "latin1_image_id": ("test", 2, b"Abyssini\xe0n_14 1 1 14", r"not UTF-8 text \(byte 0xe0\)"),
    "class_id_a_word": ("trainval", 2, "Abyssinian_2 one 1 2", r"class id 'one' is not a plain integer"),
    "class_id_unicode_digit": ("trainval", 2, "Abyssinian_2 \uff11 1 2", r"class id '\uff11' is not a plain integer"),
    "class_id_negative": ("trainval", 2, "Abyssinian_2 -1 1 2", r"class id '-1' is not a plain integer"),
    "class_id_zero": ("trainval", 2, "Abyssinian_2 0 1 2", r"class id 0 is out of range \(1\.\.37\)"),
    "class_id_too_large": ("test", 1, "Abyssinian_13 38 1 13", r"class id 38 is out of range \(1\.\.37\)"),
    "species_out_of_range": ("trainval", 4, "Abyssinian_4 1 3 4", r"species 3 is out of range \(1\.\.2\)"),
    "breed_id_decimal": ("trainval", 4, "Abyssinian_4 1 1 4.0", r"breed id '4\.0' is not a plain integer"),
    "five_fields": ("trainval", 5, "Abyssinian_5 1 1 5 extra", r"expected 'IMAGE_ID CLASS_ID SPECIES BREED_ID'"),
    "image_id_with_a_folder": (
        "trainval",
        6,
        "../images/Abyssinian_6 1 1 6",
        r"image id '\.\./images/Abyssinian_6' is not a plain file name",
    ),
    "image_id_dot_dot": ("trainval", 6, ".. 1 1 6", r"image id '\.\.' is not a plain file name"),
    "image_id_backslash": (
        "trainval",
        6,
        "sub\\Abyssinian_6 1 1 6",
        r"image id 'sub\\\\Abyssinian_6' is not a plain file name",
    ),
    "same_image_other_class": (
        "trainval",
        None,
        "Abyssinian_2 2 2 2",
        r"image 'Abyssinian_2' has class id 2 here but 1 at .*trainval\.txt:2",
    ),
    "same_image_in_both_splits": (
        "test",
        None,
        "Abyssinian_1 1 1 1",
        r"image 'Abyssinian_1' is also listed at .*trainval\.txt:1; .*leak",
    ),
    "two_class_ids_one_name": (
        "trainval",
        None,
        "Abyssinian_99 4 1 99",
        r"class 'Abyssinian' has class id 4 here but 1 at .*trainval\.txt:1; "
        r"two class ids cannot share a class name",
    ),
    "one_class_id_two_names": (
        "trainval",
        None,
        "Bengal_99 1 1 99",
        r"class id 1 is 'Bengal' here but 'Abyssinian' at .*trainval\.txt:1",
    ),
}


@pytest.mark.parametrize("case", BAD_ANNOTATIONS)
def test_every_annotation_field_is_checked_with_file_and_line(tmp_path, case):
    split, lineno, line, message = BAD_ANNOTATIONS[case]
    root = small_pets(tmp_path / "pets")
    for source_id, new_id in (("Abyssinian_1", "Abyssinian_99"), ("Bengal_1", "Bengal_99")):  # images to name
        shutil.copy(root / "images" / f"{source_id}.jpg", root / "images" / f"{new_id}.jpg")
    edit_line(root, split, lineno, line)
    ann = root / "annotations" / f"{split}.txt"
    where = f"{ann}:{lineno or len(ann.read_bytes().splitlines())}"
    with pytest.raises(PipelineError, match=rf"^{re.escape(where)}: {message}"):
        oxford_pets.read_pets_annotations(root)


def test_a_repeated_annotation_line_is_written_once_and_listed(tmp_path):
    root = small_pets(tmp_path / "pets")
    edit_line(root, "trainval", None, "Abyssinian_2 1 1 2")
    report = run_prepare(root, tmp_path / "out")
    assert report["left_out_count"] == 1
    (left_out,) = report["left_out"]
    assert left_out["file"].endswith("trainval.txt:37") and "listed again (first at" in left_out["reason"]
    written = list((tmp_path / "out").glob("*/*/*.jpg"))
    assert report["images_written"] == len(written) == 36 + 9
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["left_out"] == report["left_out"]


def test_exif_orientation_and_oversized_images_are_converted_and_counted(tmp_path):
    from test_images import oriented_jpeg

    root = small_pets(tmp_path / "pets")
    oriented_jpeg(root / "images" / "Abyssinian_1.jpg", 6)  # a phone photo held upright
    Image.new("RGB", (70000, 16), (0, 200, 0)).save(root / "images" / "Abyssinian_2.jpg", format="PNG")
    report = run_prepare(root, tmp_path / "out")
    assert (report["exif_rotated"], report["resized_to_fit_jpeg"], report["images_skipped"]) == (1, 1, 0)
    (rotated,) = (tmp_path / "out").glob("*/Abyssinian/Abyssinian_1.jpg")
    (wide,) = (tmp_path / "out").glob("*/Abyssinian/Abyssinian_2.jpg")
    with Image.open(rotated) as image:
        assert image.size == (20, 60)
    with Image.open(wide) as image:
        assert image.size == (65500, 15)


# ---------------------------------------------------------------- fractions and caps against the class count


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"val_fraction": 0.05},
            r"data\.val_fraction = 0\.05 splits 36 train/val images into 34 and 2; with 3 classes",
        ),
        ({"val_fraction": 0.95}, r"data\.val_fraction = 0\.95 splits 36 train/val images into 1 and 35"),
        ({"per_class": 2}, r"data\.val_fraction = 0\.2 splits 6 train/val \(data\.per_class = 2\) images into 4 and 2"),
    ],
    ids=["val_fraction_too_small", "val_fraction_too_large", "per_class_too_small"],
)
def test_fractions_and_caps_too_small_for_the_classes_name_the_parameter(tmp_path, data, message):
    root = small_pets(tmp_path / "pets")
    with pytest.raises(PipelineError, match=message):
        run_prepare(root, tmp_path / "out", **data)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- resources


def test_too_little_disk_space_is_refused_before_writing(tmp_path, monkeypatch):
    root = small_pets(tmp_path / "pets")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(
        PipelineError,
        match=rf"{tmp_path}: not enough disk space for the prepared data: about "
        r"\d+ MiB needed, 0 MiB free",
    ):
        run_prepare(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the download route, served locally


@pytest.fixture
def served(tmp_path):
    """A local HTTP server for a folder; yields (folder, base url)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def pets_archives(root: Path, folder: Path, url: str) -> tuple:
    """images.tar.gz and annotations.tar.gz as the official ones are laid out; their (url, md5) list."""
    archives = []
    for name in ("images", "annotations"):
        path = folder / f"{name}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(root / name, arcname=name)
        archives.append((f"{url}/{path.name}", hashlib.md5(path.read_bytes()).hexdigest()))
    return tuple(archives)


def test_download_route_verifies_and_extracts(tmp_path, served, monkeypatch):
    folder, url = served
    archives = pets_archives(small_pets(tmp_path / "pets"), folder, url)
    monkeypatch.setattr(oxford_pets, "PETS_ARCHIVES", archives)
    data = DataParams(root=None, download_dir=str(tmp_path / "raw"))
    report = prepare.prepare_oxford_pets(data, 0, tmp_path / "out")
    assert report["images_written"] == 45 and report["images_skipped"] == 0
    assert sorted(p.name for p in (tmp_path / "raw" / oxford_pets.PETS_FOLDER).iterdir()) == [
        "annotations",
        "annotations.tar.gz",
        "images",
        "images.tar.gz",
    ]


def test_download_with_wrong_checksum_is_an_error(tmp_path, served, monkeypatch):
    folder, url = served
    (image_archive, md5), annotations = pets_archives(small_pets(tmp_path / "pets"), folder, url)
    monkeypatch.setattr(oxford_pets, "PETS_ARCHIVES", ((image_archive, "0" * 32), annotations))
    with pytest.raises(PipelineError, match="images.tar.gz: the download to .* failed its MD5 check"):
        oxford_pets.locate_oxford_pets(DataParams(root=None, download_dir=str(tmp_path / "raw")))
    assert not (tmp_path / "raw" / oxford_pets.PETS_FOLDER / "images").exists()


def test_download_with_a_path_traversal_member_is_refused(tmp_path, served, monkeypatch):
    folder, url = served
    payload = tmp_path / "payload.txt"
    payload.write_text("owned")
    with tarfile.open(folder / "images.tar.gz", "w:gz") as tar:
        tar.add(payload, arcname="../../escaped.txt")
    md5 = hashlib.md5((folder / "images.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setattr(oxford_pets, "PETS_ARCHIVES", ((f"{url}/images.tar.gz", md5),))
    raw = tmp_path / "a" / "raw"
    with pytest.raises(PipelineError, match="refused to extract"):
        oxford_pets.locate_oxford_pets(DataParams(root=None, download_dir=str(raw)))
    assert not list(tmp_path.rglob("escaped.txt"))
    shutil.rmtree(raw)


def disk_full(task):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_disk_filling_up_while_writing_is_one_clear_error(tmp_path, monkeypatch):
    root = small_pets(tmp_path / "pets")
    monkeypatch.setattr(prepare, "_convert_one", disk_full)  # worker processes are forked: they see it too
    with pytest.raises(PipelineError, match=f"{tmp_path}: disk full while writing the prepared images"):
        run_prepare(root, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets"]


def test_ctrl_c_while_preparing_prints_one_line_and_leaves_nothing(tmp_path):
    """Ctrl-C reaches the re-encoding worker processes too; none of them may print a traceback."""
    pets = make_fake_pets(
        tmp_path / "pets",
        num_classes=4,
        trainval_per_class=80,
        test_per_class=10,
        size_range=(300, 400),
        awkward_files=False,
    )
    project = make_project(tmp_path / "project", {"data": {"root": str(pets)}})
    proc = start_as_in_a_terminal(
        [sys.executable, "-m", "stages.prepare_oxford_pets"], project, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not list((project / "data").glob(".oxford_pets.*.tmp/train/*/*.jpg")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "prepare_oxford_pets: interrupted; no output was half-written, re-run `dvc repro` to finish\n"
    assert list((project / "data").iterdir()) == []


def _slow_start_then_ignore_sigint() -> None:
    time.sleep(1.0)  # a worker still starting when Ctrl-C comes
    prepare._ignore_sigint()


def test_a_ctrl_c_while_workers_start_is_held_until_they_ignore_it(capfd):
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=2, initializer=_slow_start_then_ignore_sigint)
    try:
        with prepare.sigint_blocked():
            absolute = pool.map(abs, [-1, -2, -3, -4])
            for process in list(pool._processes.values()):  # each worker, while it sleeps in its initializer
                os.kill(process.pid, signal.SIGINT)
        assert list(absolute) == [1, 2, 3, 4]
    finally:
        pool.shutdown(wait=True)
    assert "Traceback" not in capfd.readouterr().err
