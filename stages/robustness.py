"""Stage robustness: both trained models on the test images under corruptions (noise, blur, JPEG, brightness,
contrast) at three severities each (petlab/robustness.py), each through its own evaluation transform.

Its cost is bounded by robustness.test_per_class: that many test images of each class (a seeded, stratified
draw), scored 16 times (clean, then 5 corruptions x 3 severities) by both models, the probe through its whole
backbone; the default keeps the stage within the evaluate stage's time on a default run.
"""

from pathlib import Path

from petlab import plots
from petlab.data import draw_subset, eval_transform, make_loader
from petlab.experiments import load_checkpoint_for, setup_stage, trained_on_device
from petlab.metrics import classification_metrics
from petlab.outputs import save_figure, write_csv, write_json
from petlab.robustness import CORRUPTIONS, SEVERITIES, CorruptedImages, conditions, relative_drop
from petlab.stage import run_stage
from petlab.train import predict

DATA = Path("data/oxford_pets")
CHECKPOINTS = {"cnn": Path("models/cnn.pt"), "vit": Path("models/vit.pt")}
METRICS = Path("metrics/robustness.json")
PLOTS = Path("plots/robustness")


def main() -> None:
    params, data = setup_stage(DATA)
    items = data.items("test")
    chosen = [items[i] for i in draw_subset([label for _, label in items], params.robustness.test_per_class,
                                            params.seed)]
    scores, predictions, model_labels = {}, {}, {}
    for name, path in CHECKPOINTS.items():
        checkpoint = load_checkpoint_for(path, data)
        model_labels[name] = plots.model_label(checkpoint["model_config"])
        model, ctx, spec = trained_on_device(checkpoint, params, name)
        dataset = CorruptedImages(chosen, conditions(), eval_transform(spec), params.seed)
        loader = make_loader(dataset, params.evaluate.batch_size, False, params.seed, ctx.device, params.loader)
        all_logits, all_labels = predict(model, loader, ctx, desc=f"robustness: {name}")
        for i, (corruption, severity) in enumerate(conditions()):  # condition i: samples i*n .. (i+1)*n - 1
            part = slice(i * len(chosen), (i + 1) * len(chosen))
            scores[name, corruption, severity] = classification_metrics(all_logits[part], all_labels[part],
                                                                        data.num_classes)
            predictions[name, corruption, severity] = all_logits[part].argmax(1).tolist()
    write_outputs(scores, predictions, [label for _, label in chosen],
                  [p.relative_to(DATA).as_posix() for p, _ in chosen], model_labels, params)


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
        out.update({f"clean_{metric}": round(clean, 6), f"corrupted_{metric}": round(corrupted, 6),
                    f"relative_drop_{metric}": round(relative_drop(clean, corrupted), 6)})
    return out


def write_outputs(scores: dict, predictions: dict, labels: list[int], images: list[str], model_labels: dict[str, str],
                  params) -> None:
    models = list(CHECKPOINTS)
    summaries = {m: summary(scores, m) for m in models}
    write_json(METRICS, {"test_images": len(labels), "test_per_class": params.robustness.test_per_class, **summaries})
    write_csv(PLOTS / "scores.csv", ({"corruption": c, "severity": s, "model": m,
                                      **{k: round(v, 6) for k, v in scores[m, c, s].items() if k != "top5_accuracy"}}
                                     for c, s in conditions() for m in models),
              ["corruption", "severity", "model", "accuracy", "macro_f1"])
    # The mean over corruptions at each severity, for `dvc plots show` (severity 0: clean).
    write_csv(PLOTS / "mean_accuracy.csv",
              ({"severity": s, **{f"{m}_accuracy": round(mean_accuracy(scores, m, s), 6) for m in models}}
               for s in (0, *SEVERITIES)), ["severity", *(f"{m}_accuracy" for m in models)])
    write_csv(PLOTS / "predictions.csv", ({"image": image, "label": label, "corruption": c, "severity": s,
                                          **{m: predictions[m, c, s][i] for m in models}}
                                         for c, s in conditions() for i, (image, label) in enumerate(zip(images, labels))),
              ["image", "label", "corruption", "severity", *models])
    save_figure(plots.robustness_figure(scores, model_labels, list(CORRUPTIONS), len(labels)), PLOTS / "accuracy.png")
    for m, s in summaries.items():
        print(f"robustness: {m}: clean accuracy {s['clean_accuracy']:.4f}, under corruption {s['corrupted_accuracy']:.4f} "
              f"(a relative drop of {s['relative_drop_accuracy']:.1%}) on {len(labels)} test images")


if __name__ == "__main__":
    run_stage("robustness", main)
