"""Stage robustness@MODEL (cnn, vit): one trained model on the test images under corruptions (noise, blur, JPEG,
brightness, contrast) at three severities each (petlab/measure/robustness.py), through its own evaluation transform.

Its cost is bounded by robustness.test_per_class: that many test images of each class (a seeded, stratified
draw, the same images for both models), scored 16 times (clean, then 5 corruptions x 3 severities), the probe
through its whole backbone; the default keeps the stage within the evaluate stage's time on a default run. The
report pairs the two models image by image.
"""

from petlab.core import paths
from petlab.core.outputs import write_csv, write_json
from petlab.core.stage import run_model_stage
from petlab.measure.robustness import score_corruptions
from petlab.train.run import setup_stage


def main(model: str) -> None:
    params, data = setup_stage(paths.DATA)
    result = score_corruptions(model, paths.checkpoint(model), params, data)
    s = result.summary()
    test_per_class = params.robustness.test_per_class
    write_json(
        paths.ROBUSTNESS_METRICS / f"{model}.json",
        {model: {**s, "test_images": len(result.labels), "test_per_class": test_per_class}},
    )
    folder = paths.ROBUSTNESS_PLOTS
    write_csv(
        folder / f"scores_{model}.csv", result.score_rows(), ["corruption", "severity", "model", "accuracy", "macro_f1"]
    )
    write_csv(folder / f"mean_accuracy_{model}.csv", result.mean_accuracy_rows(), ["severity", f"{model}_accuracy"])
    write_csv(
        folder / f"predictions_{model}.csv",
        result.prediction_rows(),
        ["image", "label", "corruption", "severity", model],
    )
    print(
        f"robustness: {model}: clean accuracy {s['clean_accuracy']:.4f}, under corruption {s['corrupted_accuracy']:.4f} "
        f"(a relative drop of {s['relative_drop_accuracy']:.1%}) on {len(result.labels)} test images"
    )


if __name__ == "__main__":
    run_model_stage("robustness", main)
