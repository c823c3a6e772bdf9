"""Stage robustness@MODEL (cnn, vit): one trained model on the test images under corruptions (noise, blur, JPEG,
brightness, contrast) at three severities each (petlab/measure/robustness.py), through its own evaluation transform.

Its cost is bounded by robustness.test_per_class: that many test images of each class (a seeded, stratified
draw, the same images for both models), scored 16 times (clean, then 5 corruptions x 3 severities), the probe
through its whole backbone; the default keeps the stage within the evaluate stage's time on a default run. The
report pairs the two models image by image.
"""

from pathlib import Path

from petlab.core.metrics import classification_metrics
from petlab.core.outputs import write_csv, write_json
from petlab.core.stage import run_model_stage
from petlab.data.dataset import draw_subset
from petlab.data.loaders import make_loader
from petlab.data.transforms import eval_transform
from petlab.measure.robustness import CORRUPTIONS, SEVERITIES, CorruptedImages, conditions, relative_drop
from petlab.train.loop import predict
from petlab.train.run import load_checkpoint_for, setup_stage, trained_on_device

DATA = Path("data/oxford_pets")
CHECKPOINTS = {"cnn": Path("models/cnn.pt"), "vit": Path("models/vit.pt")}
METRICS = Path("metrics/robustness")  # <model>.json
PLOTS = Path("plots/robustness")


def main(name: str) -> None:
    params, data = setup_stage(DATA)
    items = data.items("test")
    chosen = [
        items[i] for i in draw_subset([label for _, label in items], params.robustness.test_per_class, params.seed)
    ]
    scores, predictions = {}, {}
    checkpoint = load_checkpoint_for(CHECKPOINTS[name], data)
    model, ctx, spec = trained_on_device(checkpoint, params, name)
    dataset = CorruptedImages(chosen, conditions(), eval_transform(spec), params.seed)
    loader = make_loader(dataset, params.evaluate.batch_size, False, params.seed, ctx.device, params.loader)
    all_logits, all_labels = predict(model, loader, ctx, desc=f"robustness: {name}")
    for i, (corruption, severity) in enumerate(conditions()):  # condition i: samples i*n .. (i+1)*n - 1
        part = slice(i * len(chosen), (i + 1) * len(chosen))
        scores[name, corruption, severity] = classification_metrics(
            all_logits[part], all_labels[part], data.num_classes
        )
        predictions[name, corruption, severity] = all_logits[part].argmax(1).tolist()
    write_outputs(
        name,
        scores,
        predictions,
        [label for _, label in chosen],
        [p.relative_to(DATA).as_posix() for p, _ in chosen],
        params,
    )


def mean_accuracy(scores: dict, model: str, severity: int) -> float:
    """A model's accuracy averaged over the corruptions at one severity (0: its clean accuracy)."""
    if severity == 0:
        return scores[model, "clean", 0]["accuracy"]
    return sum(scores[model, c, severity]["accuracy"] for c in CORRUPTIONS) / len(CORRUPTIONS)


def summary(scores: dict, model: str) -> dict:
    """A model's clean score, its mean over every corruption and severity, and the relative drop between."""
    out = {}
    for metric in ("accuracy", "macro_f1"):
        clean = scores[model, "clean", 0][metric]
        corrupted = sum(scores[model, c, s][metric] for c, s in conditions()[1:]) / (len(conditions()) - 1)
        out.update(
            {
                f"clean_{metric}": round(clean, 6),
                f"corrupted_{metric}": round(corrupted, 6),
                f"relative_drop_{metric}": round(relative_drop(clean, corrupted), 6),
            }
        )
    return out


def write_outputs(model: str, scores: dict, predictions: dict, labels: list[int], images: list[str], params) -> None:
    s = summary(scores, model)
    write_json(
        METRICS / f"{model}.json",
        {model: {**s, "test_images": len(labels), "test_per_class": params.robustness.test_per_class}},
    )
    write_csv(
        PLOTS / f"scores_{model}.csv",
        (
            {
                "corruption": c,
                "severity": v,
                "model": model,
                **{k: round(x, 6) for k, x in scores[model, c, v].items() if k != "top5_accuracy"},
            }
            for c, v in conditions()
        ),
        ["corruption", "severity", "model", "accuracy", "macro_f1"],
    )
    # The mean over corruptions at each severity, for `dvc plots show` (severity 0: clean).
    write_csv(
        PLOTS / f"mean_accuracy_{model}.csv",
        ({"severity": v, f"{model}_accuracy": round(mean_accuracy(scores, model, v), 6)} for v in (0, *SEVERITIES)),
        ["severity", f"{model}_accuracy"],
    )
    write_csv(
        PLOTS / f"predictions_{model}.csv",
        (
            {"image": image, "label": label, "corruption": c, "severity": v, model: predictions[model, c, v][i]}
            for c, v in conditions()
            for i, (image, label) in enumerate(zip(images, labels))
        ),
        ["image", "label", "corruption", "severity", model],
    )
    print(
        f"robustness: {model}: clean accuracy {s['clean_accuracy']:.4f}, under corruption {s['corrupted_accuracy']:.4f} "
        f"(a relative drop of {s['relative_drop_accuracy']:.1%}) on {len(labels)} test images"
    )


if __name__ == "__main__":
    run_model_stage("robustness", main)
