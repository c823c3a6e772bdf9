import pytest
import yaml

from petlab.params import Params, ParamsError, load_params, parse_params
from conftest import REPO


def test_repository_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.train_vit.model == "vit_tiny_patch16_224"
    assert params.data.max_side == 256


def test_defaults_match_params_file():
    """params.yaml spells out every default, so what a user reads is what runs."""
    assert load_params(REPO / "params.yaml") == parse_params({})


@pytest.mark.parametrize("raw, message", [
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
])
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
    with pytest.raises(Exception):
        Params().seed = 1
