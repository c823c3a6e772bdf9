import json
from collections import Counter

import pytest

from petlab import prepare
from petlab.params import DataParams
from petlab.prepare import LOCAL_COPY_HELP, locate_oxford_pets, pets_class_name, prepare_oxford_pets
from petlab.runtime import PipelineError


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
    assert all(per_split["train"][c] == 9 and per_split["val"][c] == 3 and per_split["test"][c] == 5
               for c in classes)
    names = {s: {p.name for p in (out / s).glob("*/*.jpg")} for s in ("train", "val", "test")}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert report["images_written"] == 68 and report["images_skipped"] == 0
    assert report["max_side"] == 64
    from PIL import Image

    for path in out.glob("*/*/*.jpg"):
        with Image.open(path) as image:
            assert min(image.size) == 64 and image.mode == "RGB"


def test_split_is_seeded(fake_pets):
    source = prepare.read_pets_annotations(fake_pets)
    a = prepare.split_train_val(source.trainval, 0.25, 7, source.class_names)
    b = prepare.split_train_val(source.trainval, 0.25, 7, source.class_names)
    c = prepare.split_train_val(source.trainval, 0.25, 8, source.class_names)
    assert a == b and a != c
