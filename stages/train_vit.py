"""Stage train_vit: a linear probe on a frozen pretrained timm backbone (ViT-Tiny by default)."""

from pathlib import Path

from petlab.experiments import save_trained, setup_stage, train_vit
from petlab.runtime import run_stage

DATA = Path("data/oxford_pets")
BACKBONE = Path("models/backbone.safetensors")  # written by the backbone_weights stage
FEATURES = Path("data/features/vit.pt")
CHECKPOINT = Path("models/vit.pt")
METRICS = Path("metrics/train_vit.json")
HISTORY = Path("plots/train_vit/history.csv")
EPOCH_TIMES = Path("metrics/timing/train_vit_epochs.csv")  # wall times, apart from the deterministic history
LOG_DIR = Path("runs/vit")


def main() -> None:
    params, data = setup_stage(DATA)
    trained = train_vit(params, data, LOG_DIR, FEATURES, BACKBONE)
    if not trained.summary["pretrained"]:
        print("train_vit: WARNING: random backbone weights (train_vit.pretrained = false); not the real result")
    save_trained("train_vit", trained, data.class_names, CHECKPOINT, METRICS, HISTORY, EPOCH_TIMES)


if __name__ == "__main__":
    run_stage("train_vit", main, live_dirs=[LOG_DIR])
