"""Stage train_cnn: the small CNN from scratch; the checkpoint kept by validation (petlab.train.SELECTION_RULE)."""

from pathlib import Path

from petlab.experiments import save_trained, setup_stage, train_cnn
from petlab.runtime import run_stage

DATA = Path("data/oxford_pets")
CHECKPOINT = Path("models/cnn.pt")
METRICS = Path("metrics/train_cnn.json")
PLOTS = Path("plots/train_cnn")  # history.csv per epoch
LOG_DIR = Path("runs/cnn")


def main() -> None:
    params, data = setup_stage(DATA)
    trained = train_cnn(params, data, LOG_DIR)
    save_trained("train_cnn", trained, data.class_names, CHECKPOINT, METRICS, PLOTS)


if __name__ == "__main__":
    run_stage("train_cnn", main, live_dirs=[LOG_DIR])
