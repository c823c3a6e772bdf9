"""Stage train_cnn: the small CNN from scratch; best checkpoint by validation macro-F1."""

from pathlib import Path

from petlab.experiments import save_trained, setup_stage, train_cnn
from petlab.runtime import run_stage

DATA = Path("data/oxford_pets")
CHECKPOINT = Path("models/cnn.pt")
METRICS = Path("metrics/train_cnn.json")
HISTORY = Path("plots/train_cnn/history.csv")
EPOCH_TIMES = Path("metrics/timing/train_cnn_epochs.csv")  # wall times, apart from the deterministic history
LOG_DIR = Path("runs/cnn")


def main() -> None:
    params, data = setup_stage(DATA)
    trained = train_cnn(params, data, LOG_DIR)
    save_trained("train_cnn", trained, data.class_names, CHECKPOINT, METRICS, HISTORY, EPOCH_TIMES)


if __name__ == "__main__":
    run_stage("train_cnn", main, live_dirs=[LOG_DIR])
