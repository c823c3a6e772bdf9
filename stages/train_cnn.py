"""Stage train_cnn: the small CNN from scratch; the checkpoint kept by validation (petlab.train.state.SELECTION_RULE).

With dist.nproc_per_node > 1 it runs as that many ranks under torchrun (petlab/core/distributed.py).
"""

from petlab.core import distributed, paths
from petlab.core.device import select_device
from petlab.core.resume import Resume
from petlab.core.stage import run_stage
from petlab.train.cnn import train_cnn
from petlab.train.run import progress_writer, save_trained, setup_stage

LOG_DIR = paths.train_logs("cnn")


def main() -> None:
    params, data = setup_stage(paths.DATA)
    if distributed.launch_or_join(
        "train_cnn", params.dist.nproc_per_node, params.train_cnn.batch_size, select_device(params.device)
    ):
        return  # the ranks have trained and written everything
    if params.train_cnn.batch_norm:
        distributed.check_batch_per_rank(params.train_cnn.batch_size, 2, "train_cnn.batch_size", "BatchNorm")
    resume = Resume.for_stage("train_cnn", params)  # resume/train_cnn.pt: the state after the last epoch
    metrics, plots = paths.train_metrics("cnn"), paths.train_plots("cnn")
    trained = train_cnn(params, data, LOG_DIR, resume, on_epoch=progress_writer(metrics, plots / "history.csv"))
    if distributed.is_main():
        save_trained(
            "train_cnn", trained, data.class_names, paths.checkpoint("cnn"), metrics, plots, paths.epoch_times("cnn")
        )
        resume.remove()  # the outputs are written: nothing is left to resume


if __name__ == "__main__":
    run_stage("train_cnn", main, live_dirs=[LOG_DIR])
