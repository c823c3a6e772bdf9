"""Supplied weights files are untrusted: no code runs from them, and a known checksum is enforced."""

import numpy as np
import pytest
import torch

from petlab.downloads import file_digest
from petlab.models import load_pretrained_backbone
from petlab.runtime import PipelineError


class RunsCode:
    """Unpickling this object creates `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_pth_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"pos_embed": torch.zeros(1), "payload": RunsCode(marker)}, path)
    with pytest.raises(PipelineError, match=r"train_vit.weights = .*evil.pth.*: cannot load into test_vit"):
        load_pretrained_backbone("test_vit", True, str(path))
    assert not marker.exists()


def test_an_npz_with_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.npz"
    np.savez(path, **{"embedding/kernel": np.array([RunsCode(marker)], dtype=object)})
    with pytest.raises(PipelineError, match=r"evil.npz.*: cannot load into test_vit"):
        load_pretrained_backbone("test_vit", True, str(path))
    assert not marker.exists()


def test_weights_checksum_is_enforced(test_vit_weights):
    good = file_digest(test_vit_weights)
    model, source = load_pretrained_backbone("test_vit", True, str(test_vit_weights), weights_sha256=good)
    assert source == f"file {test_vit_weights.name}"
    with pytest.raises(PipelineError, match=rf"train_vit.weights_sha256: .* has sha256 {good}, expected f+;"):
        load_pretrained_backbone("test_vit", True, str(test_vit_weights), weights_sha256="f" * 64)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_plain_state_dicts_load(tmp_path, test_vit_weights, suffix):
    from safetensors.torch import load_file

    state = load_file(test_vit_weights)
    path = tmp_path / f"weights{suffix}"
    torch.save(state, path) if suffix == ".pth" else path.write_bytes(test_vit_weights.read_bytes())
    model, _ = load_pretrained_backbone("test_vit", True, str(path))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
