"""Stage train_vit: a linear probe on a frozen pretrained timm backbone (ViT-Tiny by default).

The image routes (augment, unfreeze) run as dist.nproc_per_node ranks under torchrun; the head on cached
features trains in seconds in one process.
"""

from petlab.core import distributed, paths
from petlab.core.device import select_device
from petlab.core.outputs import write_json
from petlab.core.resume import Resume
from petlab.core.stage import run_stage
from petlab.probe.recipe import probe_ranks, train_probe
from petlab.train.run import progress_writer, save_trained, setup_stage

LOG_DIR = paths.train_logs("vit")


def main() -> None:
    params, data = setup_stage(paths.DATA)
    ranks = probe_ranks(params)
    if distributed.launch_or_join("train_vit", ranks, params.train_vit.batch_size, select_device(params.device)):
        return  # the ranks have trained and written everything
    resume = Resume.for_stage("train_vit", params)  # resume/train_vit.pt: the image routes' state after an epoch
    metrics, plots = paths.train_metrics("vit"), paths.train_plots("vit")
    progress = progress_writer(metrics, plots / "history.csv")
    trained = train_probe(params, data, LOG_DIR, paths.FEATURES, paths.BACKBONE, resume, on_epoch=progress)
    if distributed.is_main():
        if not trained.summary["pretrained"]:
            print("train_vit: WARNING: random backbone weights (train_vit.pretrained = false); not the real result")
        save_trained(
            "train_vit", trained, data.class_names, paths.checkpoint("vit"), metrics, plots, paths.epoch_times("vit")
        )
        write_json(paths.FIT_TIMES, {"features_seconds": trained.setup_seconds, "head_seconds": trained.head_seconds})
        resume.remove()  # the outputs are written: nothing is left to resume (nor left by an earlier route)


if __name__ == "__main__":
    run_stage("train_vit", main, live_dirs=[LOG_DIR])
