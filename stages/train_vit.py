"""Stage train_vit: a linear probe on a frozen pretrained timm backbone (ViT-Tiny by default).

The image routes (augment, unfreeze) run as dist.nproc_per_node ranks under torchrun; the head on cached
features trains in seconds in one process.
"""

from pathlib import Path

from petlab.core import distributed
from petlab.core.device import select_device
from petlab.core.errors import PipelineError
from petlab.core.outputs import write_json
from petlab.core.resume import Resume
from petlab.core.stage import run_stage
from petlab.probe.recipe import train_probe
from petlab.train.run import progress_writer, save_trained, setup_stage

DATA = Path("data/oxford_pets")
BACKBONE = Path("models/backbone.safetensors")  # written by the backbone_weights stage
FEATURES = Path("data/features/vit.pt")
CHECKPOINT = Path("models/vit.pt")
METRICS = Path("metrics/train_vit.json")
PLOTS = Path("plots/train_vit")  # history.csv per epoch, c_sweep.csv per C
EPOCH_TIMES = Path("metrics/timing/train_vit_epochs.csv")  # wall times, apart from the deterministic curves
FIT_TIMES = Path("metrics/timing/train_vit_fit.json")  # the feature cache and the head's fit, in wall seconds
LOG_DIR = Path("runs/vit")


def main() -> None:
    params, data = setup_stage(DATA)
    p = params.train_vit
    if not p.image_route and distributed.launched_by_torchrun():
        raise PipelineError(
            "the probe on cached features trains in one process; run it without torchrun "
            "(several ranks serve train_vit.augment or train_vit.unfreeze)"
        )
    ranks = params.dist.nproc_per_node if p.image_route else 1
    if ranks < params.dist.nproc_per_node:
        print(
            "train_vit: the head on cached features trains in one process (dist.nproc_per_node serves "
            "the augment and unfreeze routes)"
        )
    unused = p.unused_changes()
    if unused and not distributed.launched_by_torchrun():  # once, before any ranks start
        route = (
            "the L-BFGS probe (set train_vit.solver: sgd to train the head by the loop)"
            if p.fits_lbfgs
            else "the training loop (c_grid and max_iter serve only solver lbfgs with a linear head on cached "
            "features: no augment, unfreeze or mlp head)"
        )
        print(f"train_vit: WARNING: {', '.join(f'train_vit.{k}' for k in unused)} changed but not used by {route}")
    if distributed.launch_or_join("train_vit", ranks, p.batch_size, select_device(params.device)):
        return  # the ranks have trained and written everything
    resume = Resume.for_stage("train_vit", params)  # resume/train_vit.pt: the image routes' state after an epoch
    trained = train_probe(
        params, data, LOG_DIR, FEATURES, BACKBONE, resume, on_epoch=progress_writer(METRICS, PLOTS / "history.csv")
    )
    if distributed.is_main():
        if not trained.summary["pretrained"]:
            print("train_vit: WARNING: random backbone weights (train_vit.pretrained = false); not the real result")
        save_trained("train_vit", trained, data.class_names, CHECKPOINT, METRICS, PLOTS, EPOCH_TIMES)
        write_json(FIT_TIMES, {"features_seconds": trained.setup_seconds, "head_seconds": trained.head_seconds})
        resume.remove()  # the outputs are written: nothing is left to resume (nor left by an earlier route)


if __name__ == "__main__":
    run_stage("train_vit", main, live_dirs=[LOG_DIR])
