"""The guard that training really learns: the whole pipeline on real images (Fashion-MNIST), offline.

Debian's dataset-fashion-mnist package puts the four idx files under /usr/share/datasets/fashion-mnist;
the pipeline reads them as a local copy (data.root), takes a seeded mini subset and runs under DVC: the docs'
FM-mini recipe as printed, and the probe on real pretrained features.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_PARAMS, deep_update, dvc, make_project
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from test_probe import check_probe
from test_readme import grid_points, params_of, printed_recipes, shorthands

from petlab.core.params import parse_params
from petlab.measure.evaluation import confusion_labels
from petlab.models.stand_in import DESCRIPTION, TIMM_MODEL

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Sneaker", "Bag"]
TRAIN_VAL_PER_CLASS, TEST_PER_CLASS, VAL_FRACTION = 200, 50, 0.2

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST} (apt-get install dataset-fashion-mnist)",
)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# The docs' FM-mini recipe shortened for the suite: 160 train / 40 val / 50 test images a class, a smaller CNN for 6
# epochs (added after it: the last -S of a key wins). With cheap-ViT, as the docs' measured rows were run.
SHORTER = (
    f"-S data.per_class={TRAIN_VAL_PER_CLASS} -S data.test_per_class={TEST_PER_CLASS} "
    f"-S data.val_fraction={VAL_FRACTION} -S train_cnn.epochs=6 -S 'train_cnn.widths=[16,32,64]' "
    "-S train_cnn.batch_size=32 -S train_cnn.warmup_epochs=0.5 -S train_cnn.amp=false -S sanity.max_steps=300"
)


def test_the_printed_fm_mini_recipe_learns_fashion_mnist(tmp_path):
    """dvc reads the printed -S values as the schema check of tests/test_readme.py assumes, the stages run on them,
    and the CNN learns. Up to `evaluate`: profile and report run alike on any data (the end-to-end tests run them)."""
    import shlex

    import yaml

    (printed,) = grid_points(f"dvc exp run {shorthands()['FM-mini']}")
    assert printed in printed_recipes()
    command = f"{printed} {shorthands()['cheap-ViT']} {SHORTER}"
    project = make_project(tmp_path / "project", {})
    dvc(project, "exp", "run", "evaluate", *shlex.split(command)[3:])
    applied = yaml.safe_load((project / "params.yaml").read_text())
    assert parse_params(applied) == parse_params(params_of(command))
    assert applied["data"]["classes"] == CLASSES and applied["train_cnn"]["image_size"] == 28

    # The prepared layout is the usual one: the chosen classes, capped and split, as RGB JPEGs.
    prepared = project / "data/oxford_pets"
    assert json.loads((prepared / "classes.json").read_text()) == CLASSES
    report = json.loads((prepared / "report.json").read_text())
    n_val = round(TRAIN_VAL_PER_CLASS * VAL_FRACTION)
    assert report["counts"] == {
        "train": {c: TRAIN_VAL_PER_CLASS - n_val for c in CLASSES},
        "val": {c: n_val for c in CLASSES},
        "test": {c: TEST_PER_CLASS for c in CLASSES},
    }
    assert report["converted_to_rgb"] == {"PNG L": len(CLASSES) * (TRAIN_VAL_PER_CLASS + TEST_PER_CLASS)}
    with Image.open(next((prepared / "test" / "Bag").iterdir())) as image:
        assert (image.mode, image.size) == ("RGB", (28, 28))

    # The CNN from scratch learned: well above the 1/6 of chance.
    metrics = json.loads((project / "metrics/evaluate/cnn.json").read_text())["cnn"]["test"]
    assert metrics["accuracy"] >= 0.75, metrics

    # The confusion rows are the checkpoint's own predictions on the test images, and the metrics follow from them.
    rows = read_csv(project / "plots/evaluate/confusion_cnn.csv")
    labels = confusion_labels(CLASSES)
    actual = np.array([labels.index(r["actual"]) for r in rows])
    predicted = np.array([labels.index(r["predicted"]) for r in rows])
    assert len(rows) == len(CLASSES) * TEST_PER_CLASS
    assert predicted.tolist() == predict_test(project).tolist()
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    np.add.at(matrix, (actual, predicted), 1)
    assert matrix.sum(1).tolist() == [TEST_PER_CLASS] * len(CLASSES)
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert f1_score(actual, predicted, average="macro") == pytest.approx(metrics["macro_f1"], abs=1e-6)
    per_class = {r["class"]: r for r in read_csv(project / "plots/evaluate/per_class_cnn.csv")}
    for i, name in enumerate(CLASSES):
        assert float(per_class[name]["recall"]) == pytest.approx(matrix[i, i] / matrix[i].sum(), abs=1e-6)

    # The probe's solver on real images through a fixed backbone (random weights here, but fixed): its head
    # within a point of scikit-learn's LogisticRegression with C chosen on the same val split and features.
    check_probe(project, max_gap=0.01)


# The probe on real pretrained features: EfficientNet-Lite0's ImageNet weights, a stand-in for ViT-Tiny's, which
# cannot be fetched here. 6 classes x 30 train / 10 val / 10 test images: features at 224 px cost most of the time,
# so the CNN gets one epoch and the sanity check one small batch.
STAND_IN_PARAMS = {
    "data": {
        "dataset": "fashion_mnist",
        "root": str(FASHION_MNIST),
        "classes": CLASSES,
        "val_fraction": 0.25,
        "per_class": 40,
        "test_per_class": 10,
    },
    "sanity": {"overfit_batches": 1, "batch_size": 8, "lr": 0.03, "max_steps": 300},
    "train_cnn": {
        "image_size": 28,
        "widths": [16, 32, 64],
        "augment": "crop_pad",
        "epochs": 1,
        "batch_size": 32,
        "amp": False,
    },
    "train_vit": {"model": TIMM_MODEL, "pretrained": True},
    "log": {"hist_every": 0},
}


def test_probe_on_stand_in_weights_learns_fashion_mnist(tmp_path, stand_in_weights):
    import yaml

    params = deep_update(yaml.safe_load(yaml.safe_dump(TINY_PARAMS)), STAND_IN_PARAMS)
    params["train_vit"]["weights"] = "weights/efficientnet_lite0.safetensors"  # where DVC sees it (weights/README.md)
    project = make_project(tmp_path / "project", params)
    shutil.copy2(stand_in_weights, project / "weights/efficientnet_lite0.safetensors")
    out = dvc(project, "repro", "evaluate").stdout

    # Wherever the probe's numbers are, they are named for the weights they come from.
    trained = json.loads((project / "metrics/train_vit.json").read_text())
    run_record = json.loads((project / "plots/train_vit/run.json").read_text())
    evaluation = json.loads((project / "metrics/evaluate/vit.json").read_text())["vit"]
    sanity = json.loads((project / "plots/sanity/report.json").read_text())["overfit_probe"]
    assert trained["pretrained"] is True and f"evaluate: vit: {DESCRIPTION}" in out
    for source in (run_record["weights_source"], sanity["weights_source"]):
        assert source.startswith(f"{DESCRIPTION} (file ")

    # Real features separate the classes: far above the 1/6 of chance from 30 images a class.
    assert evaluation["test"]["accuracy"] >= 0.6, evaluation["test"]
    # Metrics, sweep, checkpoint and evaluate agree on the kept C, and the head is scikit-learn's
    # LogisticRegression at that C on the same features. (Which C to keep is compared with scikit-learn in the
    # larger run above: on 10 val images a class, two selection rules may keep different C's.)
    check_probe(project)
    cache = torch.load(project / "data/features/vit.pt", weights_only=True)
    reference = LogisticRegression(C=trained["selected_c"], max_iter=1000).fit(
        cache["train/features"].double().numpy(), cache["train/labels"].numpy()
    )
    head = torch.load(project / "models/vit.pt", weights_only=True)["model_state"]
    with torch.inference_mode():
        ours = (cache["test/features"] @ head["head.weight"].T + head["head.bias"]).argmax(1).numpy()
    theirs = reference.predict(cache["test/features"].double().numpy())
    assert (ours != theirs).sum() <= 1  # a float32 head against a float64 fit: at most one borderline image


def predict_test(project: Path) -> np.ndarray:
    """The saved CNN run here on the prepared test images, in the order the evaluate stage lists them."""
    from petlab.core.outputs import load_torch
    from petlab.data.dataset import ImageDataset, PreparedData
    from petlab.data.transforms import eval_transform
    from petlab.train.run import load_trained, transform_spec

    checkpoint = load_torch(project / "models/cnn.pt")
    model = load_trained(checkpoint)
    data = PreparedData.open(project / "data/oxford_pets")
    spec = transform_spec(checkpoint["model_config"])
    dataset = ImageDataset(data.items("test"), eval_transform(spec))
    with torch.inference_mode():
        logits = model(spec.normalize(torch.stack([dataset[i][0] for i in range(len(dataset))])))
    return logits.argmax(1).numpy()
