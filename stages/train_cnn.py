"""Stage train_cnn: the small CNN from scratch; best checkpoint by validation macro-F1."""

from pathlib import Path

from petlab.data import PreparedData
from petlab.experiments import save_trained, train_cnn
from petlab.outputs import write_json
from petlab.params import load_params
from petlab.runtime import Stopwatch, run_stage, seed_everything, select_device

DATA = Path("data/oxford_pets")
CHECKPOINT = Path("models/cnn.pt")
METRICS = Path("metrics/train_cnn.json")
HISTORY = Path("plots/train_cnn/history.csv")
LOG_DIR = Path("runs/cnn")
TIMING = Path("metrics/timing/train_cnn.json")


def main() -> None:
    clock = Stopwatch()
    params = load_params()
    select_device(params.device)  # a missing GPU fails here, before any data is read
    seed_everything(params.seed)
    data = PreparedData.open(DATA)
    trained = train_cnn(params, data, LOG_DIR)
    save_trained(trained, data.class_names, CHECKPOINT, METRICS, HISTORY)
    print(f"train_cnn: best epoch {trained.result.best_epoch}, val accuracy {trained.result.best_val['accuracy']:.4f}, "
          f"val macro-F1 {trained.result.best_val['macro_f1']:.4f} -> {CHECKPOINT}")
    write_json(TIMING, {"seconds": clock.seconds()})


if __name__ == "__main__":
    run_stage("train_cnn", main)
