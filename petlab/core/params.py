"""The one schema for params.yaml, validated in full before any stage does heavy work.

Every stage calls `load_params()` first. Unknown keys (typos), wrong types and
out-of-range values raise `ParamsError` naming the key and what is allowed, so a
bad `dvc exp run -S ...` fails in a second instead of after an hour of training.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from petlab.core.errors import PipelineError, read_text

DEFAULT_PARAMS_FILE = "params.yaml"
MAX_SEED = 2**32 - 1  # numpy and scikit-learn refuse larger seeds
# Names people often write for a parameter, so an unknown key can suggest the real one.
ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "bs": "batch_size",
    "wd": "weight_decay",
    "workers": "num_workers",
}


class ParamsError(PipelineError):
    """A parameter is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class DataParams:
    dataset: Literal["oxford_pets", "cifar10", "fashion_mnist", "imagefolder"] = "oxford_pets"
    root: str | None = None  # local copy of the dataset; None downloads into download_dir
    download_dir: str = "data/raw"
    val_fraction: float = 0.2
    max_side: int | None = 256  # shorter side of re-encoded images; None keeps originals
    jpeg_quality: int = 90
    on_bad_image: Literal["skip", "fail"] = "skip"
    max_bad_fraction: float = 0.01  # above this fraction of skipped images the run fails
    classes: list[str] | None = None  # a subset of class names, in this order; None keeps all
    per_class: int | None = None  # at most this many train+val images per class (seeded draw); None keeps all
    test_per_class: int | None = None  # at most this many test images per class; None keeps all
    test_fraction: float = 0.2  # imagefolder only: the share of each class held out as test
    follow_symlinks: bool = False  # imagefolder only: read links that point outside data.root

    def check(self, key: str) -> None:
        _require(0.0 < self.val_fraction < 1.0, f"{key}.val_fraction", self.val_fraction, "a number in (0, 1)")
        _require(0.0 < self.test_fraction < 1.0, f"{key}.test_fraction", self.test_fraction, "a number in (0, 1)")
        if self.classes is not None:
            _require(
                len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes),
                f"{key}.classes",
                self.classes,
                "null or a list of at least 2 distinct class names",
            )
        if self.per_class is not None:
            _require(self.per_class >= 2, f"{key}.per_class", self.per_class, "null or an integer >= 2")
        if self.test_per_class is not None:
            _require(self.test_per_class >= 1, f"{key}.test_per_class", self.test_per_class, "null or an integer >= 1")
        if self.dataset == "imagefolder":
            _require(
                self.root is not None,
                f"{key}.root",
                self.root,
                "a folder of class subfolders when data.dataset is imagefolder",
            )
        if self.max_side is not None:
            _require(self.max_side >= 16, f"{key}.max_side", self.max_side, "null or an integer >= 16")
        _require(1 <= self.jpeg_quality <= 100, f"{key}.jpeg_quality", self.jpeg_quality, "an integer in [1, 100]")
        _require(
            0.0 <= self.max_bad_fraction < 1.0, f"{key}.max_bad_fraction", self.max_bad_fraction, "a number in [0, 1)"
        )


@dataclass(frozen=True)
class LoaderParams:
    num_workers: int | None = None  # None: chosen from the device and the core count
    pin_memory: bool | None = None  # None: on for CUDA
    prefetch_factor: int = 4

    def check(self, key: str) -> None:
        if self.num_workers is not None:
            _require(self.num_workers >= 0, f"{key}.num_workers", self.num_workers, "null or an integer >= 0")
        _require(self.prefetch_factor >= 1, f"{key}.prefetch_factor", self.prefetch_factor, "an integer >= 1")


@dataclass(frozen=True)
class LogParams:
    hist_every: int = 5  # weight/gradient histograms every N epochs (0: never)

    def check(self, key: str) -> None:
        _require(self.hist_every >= 0, f"{key}.hist_every", self.hist_every, "an integer >= 0")


@dataclass(frozen=True)
class DistParams:
    nproc_per_node: int = 1  # training ranks on this machine (one per GPU on CUDA); 1: one plain process

    def check(self, key: str) -> None:
        _require(self.nproc_per_node >= 1, f"{key}.nproc_per_node", self.nproc_per_node, "an integer >= 1")


@dataclass(frozen=True)
class SanityParams:
    overfit_batches: int = 2
    batch_size: int = 16
    max_steps: int = 300  # the overfit check fails if 100% train accuracy is not reached by then
    lr: float = 3e-3
    grid_images: int = 16  # images in each split's sample grid
    fail_on_overlap: bool = True  # exact duplicates across splits are a leak

    def check(self, key: str) -> None:
        _require(self.overfit_batches >= 1, f"{key}.overfit_batches", self.overfit_batches, "an integer >= 1")
        _require(self.batch_size >= 2, f"{key}.batch_size", self.batch_size, "an integer >= 2")
        _require(self.max_steps >= 1, f"{key}.max_steps", self.max_steps, "an integer >= 1")
        _require(self.lr > 0, f"{key}.lr", self.lr, "a number > 0")
        _require(self.grid_images >= 1, f"{key}.grid_images", self.grid_images, "an integer >= 1")


@dataclass(frozen=True)
class OptimParams:
    """What both training stages share: the one training loop reads these."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    amp: bool = True  # mixed precision where the device gains from it
    scheduler: Literal["cosine", "plateau"] = "cosine"  # both after warmup_epochs of linear warmup
    plateau_factor: float = 0.1  # plateau: multiply the lr by this when the val loss stalls
    plateau_patience: int = 2  # plateau: epochs without val-loss improvement before that

    def check(self, key: str) -> None:
        _require(self.epochs >= 1, f"{key}.epochs", self.epochs, "an integer >= 1")
        _require(0 < self.plateau_factor < 1, f"{key}.plateau_factor", self.plateau_factor, "a number in (0, 1)")
        _require(self.plateau_patience >= 0, f"{key}.plateau_patience", self.plateau_patience, "an integer >= 0")
        _require(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "an integer >= 1")
        _require(self.lr > 0, f"{key}.lr", self.lr, "a number > 0")
        _require(self.weight_decay >= 0, f"{key}.weight_decay", self.weight_decay, "a number >= 0")
        _require(
            0 <= self.warmup_epochs <= self.epochs,
            f"{key}.warmup_epochs",
            self.warmup_epochs,
            f"a number in [0, epochs={self.epochs}]",
        )
        _require(0 <= self.label_smoothing < 1, f"{key}.label_smoothing", self.label_smoothing, "a number in [0, 1)")


@dataclass(frozen=True)
class TrainCNNParams(OptimParams):
    arch: Literal["simple_cnn", "mlp", "resnet", "vgg"] = "simple_cnn"
    image_size: int = 224
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # per stage; hidden sizes for the mlp
    batch_norm: bool = True
    augment: Literal["rrc", "crop_pad", "none"] = "rrc"  # random-resized crop | pad-and-crop (CIFAR recipe) | none
    dropout: float = 0.3
    channels_last: bool = True
    epochs: int = 30
    lr: float = 3e-3

    def check(self, key: str) -> None:
        super().check(key)
        if self.batch_norm:  # BatchNorm cannot normalise a batch of one in training (the loader drops a last one)
            _require(
                self.batch_size >= 2,
                f"{key}.batch_size",
                self.batch_size,
                "an integer >= 2 when batch_norm is true (BatchNorm needs two samples)",
            )
        _require(self.image_size >= 8, f"{key}.image_size", self.image_size, "an integer >= 8")
        _require(
            1 <= len(self.widths) <= 6 and all(w >= 1 for w in self.widths),
            f"{key}.widths",
            self.widths,
            "a list of 1 to 6 positive integers",
        )
        if self.arch != "mlp":  # every conv stage halves the resolution
            _require(
                self.image_size // 2 ** len(self.widths) >= 1,
                f"{key}.widths",
                self.widths,
                f"at most log2(image_size={self.image_size}) blocks",
            )
        _require(0 <= self.dropout < 1, f"{key}.dropout", self.dropout, "a number in [0, 1)")


# What only the training loop reads (the L-BFGS probe has no epochs, lr or schedule).
LOOP_ONLY = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "scheduler",
    "plateau_factor",
    "plateau_patience",
)


@dataclass(frozen=True)
class TrainViTParams(OptimParams):
    model: str = "vit_tiny_patch16_224"  # any timm model name
    pretrained: bool = True  # false only for smoke runs: the metrics then say so
    weights: str | None = None  # local weights file (.safetensors, .pth/.bin or timm's original .npz)
    weights_sha256: str | None = None  # if set, the weights file must have this SHA-256
    augment: bool = False  # false: train the head on features cached once; true: augmented images every step
    feature_batch_size: int = 64
    unfreeze: list[str] = field(default_factory=list)  # backbone parameter-name prefixes to fine-tune, e.g. blocks.11
    backbone_lr: float = 1e-4  # the lr of the unfrozen backbone parts
    head: Literal["linear", "mlp"] = "linear"
    head_hidden: int = 512  # mlp head only
    head_dropout: float = 0.0  # mlp head only
    # A linear head on cached features: "lbfgs" fits L2-regularised logistic regression (scikit-learn, L-BFGS)
    # for every C of c_grid and keeps the best on val; "sgd" trains it with the loop below, like the other
    # routes (augment, unfreeze, the mlp head), which always do.
    solver: Literal["lbfgs", "sgd"] = "lbfgs"
    c_grid: list[float] = field(
        default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]
    )
    max_iter: int = 1000  # L-BFGS iterations at most per C
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 5.0
    label_smoothing: float = 0.0

    @property
    def route(self) -> Literal["fine_tuned", "augmented_images", "cached_features"]:
        """The one rule for how the probe trains: unfrozen backbone parts fine-tune on images; else augment sends
        augmented images through the frozen backbone; else the head trains on features cached once (by L-BFGS
        where fits_lbfgs, else by the loop)."""
        return "fine_tuned" if self.unfreeze else "augmented_images" if self.augment else "cached_features"

    @property
    def image_route(self) -> bool:
        """Images go through the backbone at every step (augmented, or to fine-tune it): nothing is cached."""
        return self.route != "cached_features"

    @property
    def fits_lbfgs(self) -> bool:
        """The standard linear probe: a linear head on cached features fitted by L-BFGS, not by the loop."""
        return not self.image_route and self.head == "linear" and self.solver == "lbfgs"

    def unused_changes(self) -> list[str]:
        """Keys set away from their defaults that this route never reads: changing or sweeping them does nothing."""
        keys = LOOP_ONLY if self.fits_lbfgs else ("c_grid", "max_iter")
        return [k for k in keys if getattr(self, k) != getattr(TrainViTParams(), k)]

    def check(self, key: str) -> None:
        super().check(key)
        _require(self.feature_batch_size >= 1, f"{key}.feature_batch_size", self.feature_batch_size, "an integer >= 1")
        _require(all(self.unfreeze), f"{key}.unfreeze", self.unfreeze, "a list of non-empty parameter-name prefixes")
        _require(self.backbone_lr > 0, f"{key}.backbone_lr", self.backbone_lr, "a number > 0")
        _require(self.head_hidden >= 1, f"{key}.head_hidden", self.head_hidden, "an integer >= 1")
        _require(0 <= self.head_dropout < 1, f"{key}.head_dropout", self.head_dropout, "a number in [0, 1)")
        _require(
            len(self.c_grid) >= 1 and min(self.c_grid) > 0 and len(set(self.c_grid)) == len(self.c_grid),
            f"{key}.c_grid",
            self.c_grid,
            "a non-empty list of distinct numbers > 0",
        )
        _require(self.max_iter >= 1, f"{key}.max_iter", self.max_iter, "an integer >= 1")
        if self.weights is not None:
            _require(self.pretrained, f"{key}.weights", self.weights, "null when pretrained is false")
        if self.weights_sha256 is not None:
            _require(
                self.weights is not None,
                f"{key}.weights_sha256",
                self.weights_sha256,
                "null unless train_vit.weights names a file",
            )
            _require(
                re.fullmatch(r"[0-9a-fA-F]{64}", self.weights_sha256) is not None,
                f"{key}.weights_sha256",
                self.weights_sha256,
                "null or 64 hexadecimal digits (the output of sha256sum)",
            )
        import timm  # imported here: the schema itself must stay light

        if not timm.is_model(self.model):
            close = difflib.get_close_matches(self.model, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ParamsError(f"{key}.model: unknown timm model {self.model!r}{hint} (see timm.list_models())")


@dataclass(frozen=True)
class ProfileParams:
    wait: int = 5
    warmup: int = 5
    active: int = 50
    batch_size: int = 32
    top_ops: int = 10

    def check(self, key: str) -> None:
        _require(self.wait >= 0, f"{key}.wait", self.wait, "an integer >= 0")
        _require(self.warmup >= 0, f"{key}.warmup", self.warmup, "an integer >= 0")
        _require(self.active >= 1, f"{key}.active", self.active, "an integer >= 1")
        _require(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "an integer >= 1")
        _require(self.top_ops >= 1, f"{key}.top_ops", self.top_ops, "an integer >= 1")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 128

    def check(self, key: str) -> None:
        _require(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "an integer >= 1")


@dataclass(frozen=True)
class RobustnessParams:
    # Test images of each class scored under every corruption (a seeded, stratified draw). 10: 370 images on
    # Oxford-IIIT Pet, enough for intervals that mean something (the report gives none under 200 images).
    test_per_class: int = 10

    def check(self, key: str) -> None:
        _require(self.test_per_class >= 1, f"{key}.test_per_class", self.test_per_class, "an integer >= 1")


@dataclass(frozen=True)
class ReportParams:
    bootstrap: int = 2000  # resamples of the test images for each 95% confidence interval
    misclassified: int = 16  # test images in each model's grid of mistakes

    def check(self, key: str) -> None:
        _require(self.bootstrap >= 100, f"{key}.bootstrap", self.bootstrap, "an integer >= 100")
        _require(self.misclassified >= 0, f"{key}.misclassified", self.misclassified, "an integer >= 0")


# The largest size of the study's ladder: every training image of each class.
ALL_IMAGES = "all"


@dataclass(frozen=True)
class CNNGridParams:
    """The study's search over the CNN's recipe at each size (docs/study.md): every lr x weight_decay."""

    lr: list[float] = field(default_factory=lambda: [0.001, 0.003, 0.01])
    weight_decay: list[float] = field(default_factory=lambda: [0.005, 0.05])

    def check(self, key: str) -> None:
        for name in ("lr", "weight_decay"):
            values = getattr(self, name)
            _require(
                len(values) >= 1
                and len(set(values)) == len(values)
                and min(values) >= 0
                and (name != "lr" or min(values) > 0),
                f"{key}.{name}",
                values,
                f"a non-empty list of distinct numbers {'> 0' if name == 'lr' else '>= 0'}",
            )


@dataclass(frozen=True)
class StudyParams:
    """The opt-in study (study/pipeline.yaml): both models over seeds and a ladder of training-set sizes."""

    # Each seed: the CNN's init, data order and augmentation, and the subsets drawn. Five: docs/study.md#power.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # Training images per class, each subset nested in the next larger; "all": the whole train split.
    images_per_class: list[int | Literal["all"]] = field(default_factory=lambda: [5, 10, 25, 50, ALL_IMAGES])
    # Selection (val) images per class each cell chooses its epoch or C on: "scaled" draws them with the train
    # subset, in the split's own val : train ratio (nested and stratified alike); an integer, that many at every
    # size; "all", the whole val split.
    val_per_class: int | Literal["scaled", "all"] = "scaled"
    min_steps: int = 1000  # the CNN trains for at least this many optimiser steps at every size (more epochs)
    cnn_grid: CNNGridParams = field(default_factory=CNNGridParams)  # the CNN's recipes tried at each size
    # The probe's C tried in every cell: as many values as the CNN's grid has recipes (the same tuning budget).
    probe_c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0, 100.0])
    # The budget check's tolerance, fixed before any run: the CNN counts as trained enough at a size only where
    # the one-sided 95% upper bound of the test macro-F1 it gains from twice its steps is under it.
    budget_tolerance: float = 0.02

    def check(self, key: str) -> None:
        _require(
            len(self.seeds) >= 1
            and len(set(self.seeds)) == len(self.seeds)
            and all(0 <= s <= MAX_SEED for s in self.seeds),
            f"{key}.seeds",
            self.seeds,
            f"a non-empty list of distinct integers in [0, {MAX_SEED}]",
        )
        sizes = self.images_per_class
        _require(
            len(sizes) >= 1 and len(set(sizes)) == len(sizes) and all(n == ALL_IMAGES or n >= 1 for n in sizes),
            f"{key}.images_per_class",
            sizes,
            f"a non-empty list of distinct integers >= 1, and {ALL_IMAGES!r} for every image",
        )
        if isinstance(self.val_per_class, int):
            _require(
                self.val_per_class >= 1,
                f"{key}.val_per_class",
                self.val_per_class,
                "'scaled', 'all' or an integer >= 1",
            )
        _require(self.min_steps >= 0, f"{key}.min_steps", self.min_steps, "an integer >= 0")
        self.cnn_grid.check(f"{key}.cnn_grid")
        _require(
            len(self.probe_c_grid) >= 1
            and min(self.probe_c_grid) > 0
            and len(set(self.probe_c_grid)) == len(self.probe_c_grid),
            f"{key}.probe_c_grid",
            self.probe_c_grid,
            "a non-empty list of distinct numbers > 0",
        )
        _require(
            0 < self.budget_tolerance < 1,
            f"{key}.budget_tolerance",
            self.budget_tolerance,
            "a number in (0, 1): a gain of test macro-F1, 0.02 for 2 points",
        )


@dataclass(frozen=True)
class Params:
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    data: DataParams = field(default_factory=DataParams)
    loader: LoaderParams = field(default_factory=LoaderParams)
    log: LogParams = field(default_factory=LogParams)
    dist: DistParams = field(default_factory=DistParams)
    sanity: SanityParams = field(default_factory=SanityParams)
    train_cnn: TrainCNNParams = field(default_factory=TrainCNNParams)
    train_vit: TrainViTParams = field(default_factory=TrainViTParams)
    profile: ProfileParams = field(default_factory=ProfileParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    robustness: RobustnessParams = field(default_factory=RobustnessParams)
    report: ReportParams = field(default_factory=ReportParams)
    study: StudyParams = field(default_factory=StudyParams)

    def check(self, key: str = "") -> None:
        _require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}] (numpy's seed range)")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.check(f.name)
        if self.train_cnn.batch_norm:  # the profile stage takes training steps of the CNN at its own batch size
            _require(
                self.profile.batch_size >= 2,
                "profile.batch_size",
                self.profile.batch_size,
                "an integer >= 2 when train_cnn.batch_norm is true (BatchNorm needs two samples)",
            )
            ranks = self.dist.nproc_per_node  # each rank normalises its own share of the batch
            _require(
                self.train_cnn.batch_size >= 2 * ranks,
                "train_cnn.batch_size",
                self.train_cnn.batch_size,
                f"an integer >= {2 * ranks} with batch_norm on dist.nproc_per_node={ranks} ranks "
                "(BatchNorm needs two samples on each rank)",
            )


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read, type-check and range-check the whole params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root)")
    try:
        raw = yaml.load(read_text(path), Loader=UniqueKeyLoader) or {}
    except yaml.MarkedYAMLError as err:  # one line: file:line and the problem
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}{line}: not valid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    params = parse_params(raw, source=str(path))
    return params


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: the base class reports it
                break
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first_line[key]})", key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    params = _build(Params, raw, prefix="", source=source)
    params.check()
    return params


def to_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            known = names + [alias for alias, name in ALIASES.items() if name in names]
            close = difflib.get_close_matches(str(key), known, n=1)
            if close:
                hint = f"; did you mean {prefix}{ALIASES.get(close[0], close[0])}?"
            else:
                hint = f" (allowed: {', '.join(names)})"
            raise ParamsError(f"{source}: unknown parameter {prefix}{key}{hint}")
    values = {}
    for name in names:
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], f"{prefix}{name}", source)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, f"{key}.", source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for i, option in enumerate(inner):  # several types (an integer or "all"): the first that fits
            try:
                return _coerce(option, value, key, source)
            except ParamsError:
                if i == len(inner) - 1:
                    raise ParamsError(
                        f"{source}: {key} must be {' or '.join(map(_type_name, inner))}, got {value!r}"
                    ) from None

    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{source}: {key} = {value!r} is not allowed (allowed: {', '.join(map(str, args))})")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        # YAML reads 3e-4 (no dot) as a string: accept it, since that is how people write learning rates.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{source}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):  # inf or nan (YAML's .inf / .nan) would train to NaN or never stop
            raise ParamsError(f"{source}: {key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"params schema: unsupported type {hint} for {key}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamsError(f"{key} = {value!r} is out of range (allowed: {allowed})")
