import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from petlab.core.device import Precision
from petlab.core.errors import PipelineError
from petlab.core.params import LoaderParams
from petlab.data.dataset import ImageDataset, read_image
from petlab.data.loaders import EpochSampler, make_loader
from petlab.data.transforms import TransformSpec, eval_transform, train_transform
from petlab.train.loop import StepContext


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


def test_eval_transform_is_deterministic_and_batches_normalise_on_the_device(tmp_path):
    spec = TransformSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image = Image.new("RGB", (64, 48), (255, 255, 255))
    x = eval_transform(spec)(image)
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)
    assert torch.equal(x, eval_transform(spec)(image))
    assert torch.equal(spec.normalize(x[None]), torch.ones(1, 3, 32, 32))  # white -> (1 - 0.5) / 0.5


def test_normalize_equals_torchvisions_per_image_normalisation():
    spec = TransformSpec(size=8, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    per_image = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])
    torch.testing.assert_close(
        spec.normalize(images), torch.stack([per_image(x) for x in images]), atol=1e-6, rtol=1e-6
    )


def test_step_context_normalises_uint8_batches_in_the_memory_format_asked_for():
    spec = TransformSpec(size=8)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ctx = StepContext(torch.device("cpu"), Precision(None, False), channels_last=True, input_spec=spec)
    x = ctx.to_device(images)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, spec.normalize(images))
    features = torch.randn(2, 16)
    assert torch.equal(ctx.to_device(features), features)  # features pass as they are
    with pytest.raises(ValueError, match="input_spec"):
        StepContext(torch.device("cpu"), Precision(None, False)).to_device(images)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_read_image_gives_pils_pixels(tmp_path, mode):
    rng = np.random.default_rng(0)
    path = tmp_path / "image.jpg"
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode).save(path, quality=90)
    with Image.open(path) as image:
        expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    x = read_image(path)
    assert x.dtype == torch.uint8 and x.shape == (3, 37, 53)
    if mode == "CMYK":  # the two libraries invert Adobe CMYK alike but round the conversion differently
        assert (x.int() - expected.int()).abs().max() <= 2
    else:
        assert torch.equal(x, expected)


def test_read_image_names_a_file_it_cannot_decode(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(PipelineError, match="broken.jpg"):
        read_image(path)


def test_train_transform_gives_uint8_crops_from_tensors_and_pil_images(tmp_path):
    spec = TransformSpec(size=24)
    image = Image.new("RGB", (50, 40), (10, 200, 30))
    for augment in ("rrc", "crop_pad", "none"):
        transform = train_transform(spec, augment)
        for source in (image, read_image(_items(tmp_path, 1)[0][0])):
            x = transform(source)
            assert x.dtype == torch.uint8 and x.shape == (3, 24, 24), augment


def test_vit_eval_preprocessing_matches_timms_own_transform(tmp_path):
    """From the JPEG file to the model's input: our decode, resize, crop and per-batch normalisation
    against timm's transform for the same model applied to the PIL image."""
    import timm
    from timm.data import create_transform, resolve_model_data_config

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    config = resolve_model_data_config(model)
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path, quality=92)
    spec = TransformSpec.from_timm(config)
    ours = spec.normalize(eval_transform(spec)(read_image(path))[None])[0]
    with Image.open(path) as image:
        theirs = create_transform(**config, is_training=False)(image.convert("RGB"))
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_loader_workers_fit_in_a_small_dev_shm(tmp_path, monkeypatch, capsys):
    """Docker's default /dev/shm is 64 MB; 8 workers x 4 prefetched batches of 9.6 MB (64 images at 224 px) would
    die with a bus error. The batches in flight are lowered to fit half of it, in one line saying how to give more."""
    from petlab.data import loaders
    from petlab.data.loaders import fit_shared_memory

    mb = 2**20
    assert fit_shared_memory(8, 4, int(9.6 * mb), None) == (8, 4)  # no /dev/shm: nothing to fit
    assert fit_shared_memory(8, 4, int(9.6 * mb), 8 * 1024 * mb) == (8, 4)
    assert fit_shared_memory(8, 4, int(9.6 * mb), 64 * mb) == (3, 1)
    assert fit_shared_memory(2, 4, int(9.6 * mb), 128 * mb) == (2, 3)  # fewer batches first, then fewer workers
    assert fit_shared_memory(2, 4, 40 * mb, 64 * mb) == (0, 4)  # not one batch fits: the process loads itself
    capsys.readouterr()

    dataset = ImageDataset(_items(tmp_path), train_transform(TransformSpec(size=32)), seed=3)
    batch_bytes = 4 * 3 * 32 * 32
    monkeypatch.setattr(loaders, "shared_memory_bytes", lambda: 2 * 2 * batch_bytes)  # half of it: two batches
    loader = make_loader(dataset, 4, True, 3, torch.device("cpu"), LoaderParams(num_workers=2, prefetch_factor=4))
    assert (loader.num_workers, loader.prefetch_factor) == (2, 1)
    said = capsys.readouterr().out
    assert said.startswith("loader: /dev/shm holds") and "2 workers x 1 batch;" in said and "--shm-size" in said
    assert len(said.splitlines()) == 1
    assert len(_epochs(loader, 1)[0]) == 12
