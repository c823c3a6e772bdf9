import torch
from PIL import Image

from petlab.data import EpochSampler, ImageDataset, TransformSpec, eval_transform, make_loader, train_transform
from petlab.params import LoaderParams


def _items(tmp_path, n=12):
    items = []
    for i in range(n):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (80 + i, 60), (i * 20 % 255, 100, 50)).save(path)
        items.append((path, i % 3))
    return items


def _epochs(loader, n):
    return [torch.cat([x for x, _ in loader]) for _ in range(n)]


def test_augmented_batches_do_not_depend_on_worker_count(tmp_path):
    dataset = ImageDataset(_items(tmp_path), train_transform(TransformSpec(size=32)), seed=3)
    runs = []
    for workers in (0, 2):
        loader = make_loader(dataset, 4, True, 3, torch.device("cpu"), LoaderParams(num_workers=workers))
        runs.append(_epochs(loader, 2))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][0], runs[0][1]), "each epoch must see new augmentations"


def test_epoch_sampler_reshuffles_and_tags_the_epoch():
    sampler = EpochSampler(5, shuffle=True, seed=0)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(5)) and sorted(second) == list(range(5, 10))
    assert [k - 5 for k in second] != first
    assert list(EpochSampler(5, shuffle=True, seed=0)) == first


def test_eval_transform_is_deterministic_and_normalised(tmp_path):
    spec = TransformSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image = Image.new("RGB", (64, 48), (255, 255, 255))
    x = eval_transform(spec)(image)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x, torch.ones_like(x))  # white -> (1 - 0.5) / 0.5
    assert torch.equal(x, eval_transform(spec)(image))


def test_vit_eval_preprocessing_matches_timms_own_transform():
    import numpy as np
    import timm
    from timm.data import create_transform, resolve_model_data_config

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    config = resolve_model_data_config(model)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    ours = eval_transform(TransformSpec.from_timm(config))(image)
    theirs = create_transform(**config, is_training=False)(image)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert torch.allclose(ours, theirs, atol=1e-5)
