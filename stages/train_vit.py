"""Stage train_vit: a linear probe on a frozen pretrained timm backbone (ViT-Tiny by default)."""

from pathlib import Path

from petlab.data import PreparedData
from petlab.experiments import save_trained, train_vit
from petlab.outputs import write_json
from petlab.params import load_params
from petlab.runtime import Stopwatch, run_stage, seed_everything, select_device

DATA = Path("data/oxford_pets")
FEATURES = Path("data/features/vit.pt")
CHECKPOINT = Path("models/vit.pt")
METRICS = Path("metrics/train_vit.json")
HISTORY = Path("plots/train_vit/history.csv")
LOG_DIR = Path("runs/vit")
TIMING = Path("metrics/timing/train_vit.json")


def main() -> None:
    clock = Stopwatch()
    params = load_params()
    select_device(params.device)  # a missing GPU fails here, before any data is read
    seed_everything(params.seed)
    data = PreparedData.open(DATA)
    trained = train_vit(params, data, LOG_DIR, FEATURES)
    save_trained(trained, data.class_names, CHECKPOINT, METRICS, HISTORY)
    if not params.train_vit.pretrained:
        print("train_vit: WARNING: random backbone weights (train_vit.pretrained = false); not the real result")
    print(f"train_vit: best epoch {trained.result.best_epoch}, val accuracy {trained.result.best_val['accuracy']:.4f}, "
          f"val macro-F1 {trained.result.best_val['macro_f1']:.4f} -> {CHECKPOINT}")
    write_json(TIMING, {"seconds": clock.seconds()})


if __name__ == "__main__":
    run_stage("train_vit", main)
