"""The params schema: typos, wrong types and out-of-range values fail up front, naming the key and what is allowed."""

import sys

import pytest
import yaml
from conftest import REPO, TINY_PARAMS, deep_update, run
from test_stage_refusals import light_project

from petlab.core.errors import PipelineError
from petlab.core.params import Params, ParamsError, load_params, parse_params
from petlab.prepare.splits import prepare_dataset


def test_repository_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.train_vit.model == "vit_tiny_patch16_224"
    assert params.data.max_side == 256


def test_defaults_match_params_file():
    """params.yaml spells out every default, so what a user reads is what runs."""
    assert load_params(REPO / "params.yaml") == parse_params({})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train_cnn": {"lerning_rate": 0.1}}, "unknown parameter train_cnn.lerning_rate"),
        ({"train_cnn": {"lr": 0}}, "train_cnn.lr"),
        ({"train_cnn": {"batch_size": 0}}, "train_cnn.batch_size"),
        ({"train_cnn": {"batch_size": "64"}}, "train_cnn.batch_size must be an integer"),
        ({"data": {"val_fraction": 1.0}}, "data.val_fraction"),
        ({"data": {"on_bad_image": "ignore"}}, "allowed: skip, fail"),
        ({"device": "tpu"}, "allowed: auto, cpu, cuda, mps"),
        ({"train_vit": {"model": "vit_tiny_patch16_244"}}, "did you mean vit_tiny_patch16_224"),
        ({"train_cnn": {"widths": 32}}, "train_cnn.widths must be a list"),
        ({"train_vit": {"amp": "yes"}}, "train_vit.amp must be true or false"),
        ({"train_vit": {"solver": "adam"}}, "allowed: lbfgs, sgd"),
        ({"train_vit": {"c_grid": []}}, "train_vit.c_grid"),
        ({"train_vit": {"c_grid": [0.1, 0, 10]}}, "train_vit.c_grid"),
        ({"train_vit": {"c_grid": [1, 1.0]}}, "train_vit.c_grid"),
        ({"train_vit": {"max_iter": 0}}, "train_vit.max_iter"),
    ],
)
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_params(raw)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ParamsError, match=r"did you mean train_cnn\.lr\?"):
        parse_params({"train_cnn": {"lrr": 0.1}})


def test_learning_rate_written_in_e_notation_is_a_number(tmp_path):
    # YAML 1.1 reads 3e-4 as a string; `dvc exp run -S train_vit.lr=3e-4` writes exactly that.
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train_vit": {"lr": "3e-4"}}))
    assert load_params(path).train_vit.lr == pytest.approx(3e-4)


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        Params().seed = 1


def test_params_yaml_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.train_vit.weights_sha256 is None


def test_every_param_is_in_the_schema_and_back():
    """params.yaml lists every schema field (nothing hidden behind a default) and nothing else."""
    from petlab.core.params import to_dict

    def keys(d, prefix=""):
        return {
            k2 for k, v in d.items() for k2 in (keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])
        }

    assert keys(yaml.safe_load((REPO / "params.yaml").read_text())) == keys(to_dict(parse_params({})))


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"train_cnn": {"lerning_rate": 0.1}},
            r"unknown parameter train_cnn\.lerning_rate; did you mean train_cnn\.lr\?$",
        ),
        ({"trian_cnn": {}}, r"unknown parameter trian_cnn; did you mean train_cnn\?"),
        ({"train_cnn": {"epochs": "ten"}}, r"train_cnn\.epochs must be an integer, got 'ten'"),
        ({"train_cnn": {"epochs": 2.5}}, r"train_cnn\.epochs must be an integer"),
        ({"train_cnn": {"amp": "yes"}}, r"train_cnn\.amp must be true or false"),
        ({"train_cnn": {"widths": 32}}, r"train_cnn\.widths must be a list"),
        ({"train_cnn": {"lr": "fast"}}, r"train_cnn\.lr must be a number"),
        ({"device": "gpu"}, r"device = 'gpu' is not allowed \(allowed: auto, cpu, cuda, mps\)"),
        ({"data": {"on_bad_image": "ignore"}}, r"data\.on_bad_image = 'ignore' is not allowed \(allowed: skip, fail\)"),
        ({"train_cnn": {"lr": 0}}, r"train_cnn\.lr = 0\.0 is out of range \(allowed: a number > 0\)"),
        ({"train_vit": {"lr": -1e-3}}, r"train_vit\.lr = -0\.001 is out of range \(allowed: a number > 0\)"),
        ({"train_cnn": {"batch_size": 0}}, r"train_cnn\.batch_size = 0 is out of range \(allowed: an integer >= 1\)"),
        ({"sanity": {"batch_size": 0}}, r"sanity\.batch_size = 0 is out of range"),
        ({"data": {"val_fraction": 0}}, r"data\.val_fraction = 0\.0 is out of range \(allowed: a number in \(0, 1\)\)"),
        ({"data": {"val_fraction": 1.0}}, r"data\.val_fraction = 1\.0 is out of range"),
        ({"data": {"max_bad_fraction": 1.5}}, r"data\.max_bad_fraction = 1\.5 is out of range"),
        (
            {"train_vit": {"model": "vit_tiny_patch16_244"}},
            r"train_vit\.model: unknown timm model 'vit_tiny_patch16_244'; did you mean vit_tiny_patch16_224",
        ),
        ({"train_vit": {"weights_sha256": "ab" * 32}}, r"train_vit\.weights_sha256 = .* \(allowed: null unless"),
        (
            {"train_vit": {"weights": "w.safetensors", "weights_sha256": "xyz"}},
            r"train_vit\.weights_sha256 = 'xyz' is out of range \(allowed: null or 64 hexadecimal digits",
        ),
        ({"sanity": {"overfit_batches": 0}}, r"sanity\.overfit_batches = 0 is out of range"),
    ],
)
def test_bad_params_name_the_key_and_what_is_allowed(raw, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_yaml_style_numbers_are_accepted():
    assert parse_params({"train_vit": {"lr": "3e-4"}}).train_vit.lr == 3e-4


def test_stage_command_line_with_bad_params_exits_with_one_line(tmp_path):
    """No data exists in this project: the failure happened before any data was looked at. (Other refusals through
    a stage's command line: tests/test_stage_refusals.py; every range check: the schema tests here.)"""
    project = light_project(tmp_path / "project", {"train_cnn": {"lerning_rate": 0.1}})
    proc = run([sys.executable, "-m", "stages.train_cnn"], project, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "train_cnn: error: params.yaml: unknown parameter train_cnn.lerning_rate; did you mean train_cnn.lr?"
    ]


def test_overfit_batches_larger_than_the_data_fails_before_checking_it(tmp_path, fake_pets):
    project = light_project(
        tmp_path / "project",
        deep_update(
            yaml.safe_load(yaml.safe_dump(TINY_PARAMS)),
            {"data": {"root": str(fake_pets)}, "sanity": {"overfit_batches": 50, "batch_size": 8}},
        ),
    )
    params = load_params(project / "params.yaml")
    prepare_dataset(params.data, params.seed, project / "data/oxford_pets")  # what the prepare stage runs
    proc = run([sys.executable, "-m", "stages.sanity_data"], project, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "sanity_data: error: sanity.overfit_batches = 50 with sanity.batch_size = 8 needs 400 training images but "
        "there are 36; lower one of them"
    ]
    assert not (project / "metrics" / "sanity.json").exists()


def schema_fields(cls=Params, prefix=""):
    """(dotted key, type hint) of every leaf parameter, read from the schema itself."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from schema_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name]


def nested(key: str, value) -> dict:
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}


FLOAT_KEYS = [key for key, hint in schema_fields() if hint is float]
NON_FINITE = {
    "inf": float("inf"),
    "minus_inf": float("-inf"),
    "nan": float("nan"),
    "inf_string": "inf",
    "nan_string": "NaN",
}


@pytest.mark.parametrize("value", NON_FINITE.values(), ids=NON_FINITE.keys())
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_numbers_are_refused_for_every_float(key, value):
    assert len(FLOAT_KEYS) > 10  # every section's floats: lr, fractions, dropout, ...
    with pytest.raises(ParamsError, match=rf"{key.replace('.', '[.]')} must be a finite number"):
        parse_params(nested(key, value))


@pytest.mark.parametrize("key", [key for key, _ in schema_fields()])
def test_a_typo_of_any_key_in_any_section_suggests_the_key(key):
    section, _, name = key.rpartition(".")
    typo = f"{section}.{name}{name[-1]}" if section else f"{name}{name[-1]}"
    with pytest.raises(
        ParamsError,
        match=rf"unknown parameter {typo.replace('.', '[.]')}; did you mean "
        rf"{key.replace('.', '[.]')}\?$",
    ):
        parse_params(nested(typo, 1))


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"seed": -1}, r"seed = -1 is out of range \(allowed: an integer in \[0, 4294967295\]"),
        ({"seed": 2**32}, r"seed = 4294967296 is out of range"),
        (
            {"train_cnn": {"batch_size": 1}},
            r"train_cnn\.batch_size = 1 is out of range \(allowed: an integer >= 2 when "
            r"batch_norm is true",
        ),
        (
            {"profile": {"batch_size": 1}},
            r"profile\.batch_size = 1 is out of range \(allowed: an integer >= 2 when "
            r"train_cnn\.batch_norm is true",
        ),
        (
            {"train_cnn": {"batch_size": 2}, "dist": {"nproc_per_node": 2}},
            r"train_cnn\.batch_size = 2 is out of range \(allowed: an integer >= 4 with batch_norm on "
            r"dist\.nproc_per_node=2 ranks",
        ),
        ({"zzz": 1}, r"unknown parameter zzz \(allowed: seed, device, data, loader"),
        (
            {"loader": {"zzz": 1}},
            r"unknown parameter loader\.zzz \(allowed: num_workers, pin_memory, prefetch_factor\)",
        ),
        (
            {"train_vit": {"learning_rate": 1e-3}},
            r"unknown parameter train_vit\.learning_rate; did you mean train_vit\.lr\?",
        ),
    ],
    ids=[
        "seed_negative",
        "seed_too_large",
        "batch_of_one_with_batchnorm",
        "profile_batch_of_one_with_batchnorm",
        "batch_of_one_per_rank_with_batchnorm",
        "unknown_top_level_key",
        "unknown_loader_key",
        "learning_rate_alias",
    ],
)
def test_params_refused_with_the_key(raw, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_edge_values_that_are_fine_are_accepted():
    assert parse_params({"seed": 2**32 - 1}).seed == 2**32 - 1
    assert (
        parse_params(
            {"train_cnn": {"batch_size": 1, "batch_norm": False}, "profile": {"batch_size": 1}}
        ).train_cnn.batch_size
        == 1
    )
    assert parse_params({"train_cnn": {"batch_size": 4}, "dist": {"nproc_per_node": 2}}).train_cnn.batch_size == 4


PARAMS_FILES = {
    "duplicate_top_level_key": (
        "seed: 1\ndevice: cpu\nseed: 2\n",
        r"params\.yaml:3: not valid YAML: duplicate key "
        r"'seed' \(first at line 1\)$",
    ),
    "duplicate_nested_key": (
        "train_cnn:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n",
        r"params\.yaml:4: not valid YAML: duplicate key 'lr' \(first at line 2\)$",
    ),
    "not_utf8": (b"seed: 1\ndata:\n  root: /d\xe9j\xe0\n", r"params\.yaml:3: not UTF-8 text \(byte 0xe9\)"),
    "bad_yaml": ("seed: 1\ntrain_cnn:\n  lr: [0.1\n", r"params\.yaml:\d+: not valid YAML: [^\n]+$"),
    "not_a_mapping": ("- 1\n- 2\n", r"the top level must be a mapping"),
}


@pytest.mark.parametrize("case", PARAMS_FILES)
def test_params_files_refused_in_one_line_naming_file_and_line(tmp_path, case):
    text, message = PARAMS_FILES[case]
    path = tmp_path / "params.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(PipelineError, match=message) as err:
        load_params(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "train_vit, unused",
    [
        ({}, []),
        ({"lr": 3e-4, "weight_decay": 0.0}, ["lr", "weight_decay"]),  # the default L-BFGS probe has no lr
        ({"solver": "sgd", "lr": 3e-4}, []),
        ({"solver": "sgd", "c_grid": [1.0, 10.0]}, ["c_grid"]),
        ({"augment": True, "lr": 3e-4, "max_iter": 50}, ["max_iter"]),  # augmented images always train by the loop
        ({"head": "mlp", "epochs": 10}, []),
    ],
    ids=["defaults", "lr_on_lbfgs", "lr_on_sgd", "c_grid_on_sgd", "max_iter_on_augment", "epochs_on_mlp_head"],
)
def test_train_vit_names_the_changed_keys_its_route_does_not_read(train_vit, unused):
    assert parse_params({"train_vit": train_vit}).train_vit.unused_changes() == unused


@pytest.mark.parametrize(
    "train_vit, route, lbfgs",
    [
        ({}, "cached_features", True),
        ({"solver": "sgd"}, "cached_features", False),
        ({"head": "mlp"}, "cached_features", False),  # L-BFGS fits a linear head only
        ({"augment": True}, "augmented_images", False),
        ({"unfreeze": ["blocks.11"]}, "fine_tuned", False),
        ({"unfreeze": ["blocks.11"], "augment": True}, "fine_tuned", False),  # fine-tuning takes augment as its own
    ],
)
def test_train_vit_params_choose_one_route(train_vit, route, lbfgs):
    p = parse_params({"train_vit": train_vit}).train_vit
    assert (p.route, p.fits_lbfgs, p.image_route) == (route, lbfgs, route != "cached_features")
