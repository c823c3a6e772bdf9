"""Stage evaluate@MODEL (cnn, vit): one model's best checkpoint on train, val and test; metrics, calibration (as
trained and after temperature scaling fitted on val, with its reliability bins), per-class table, confusion
matrices, test predictions. Each model is its own stage, so a change to one model scores that model alone; the
report pairs the two image by image.

Every split is scored the same way for both models: un-augmented images, model in eval mode. So the train
numbers measure how well each model fits its training data on equal terms (training's own train metrics are
of augmented batches, with dropout on, for the CNN), and the report's gaps compare like with like.
"""

from petlab.core import paths
from petlab.core.outputs import write_csv, write_json
from petlab.core.records import weights_label
from petlab.core.stage import run_model_stage
from petlab.figures import plots
from petlab.measure.evaluation import evaluate, write_predictions, write_reports
from petlab.train.run import setup_stage


def main(model: str) -> None:
    params, data = setup_stage(paths.DATA)
    result = evaluate(model, params, data)
    folder = paths.EVALUATE_PLOTS
    matrix = write_reports(model, result.test_logits, result.test_labels, data.class_names, folder)
    title = f"{plots.model_label(result.checkpoint['model_config'])} (test)"
    plots.save_confusion_figures(matrix, data.class_names, folder, model, title)
    images = [path.relative_to(data.root).as_posix() for path, _ in data.items("test")]
    write_predictions(
        folder / f"predictions_test_{model}.csv",
        images,
        result.test_labels,
        {model: result.test_logits},
        data.class_names,
    )
    write_csv(folder / f"reliability_{model}.csv", result.reliability_bins(), ["images", "confidence", "accuracy"])
    # keyed by the model, as `dvc exp show` names the columns
    write_json(paths.EVALUATE_METRICS / f"{model}.json", {model: result.results})
    r = result.results
    top5 = f", top-5 {r['test']['top5_accuracy']:.4f}" if "top5_accuracy" in r["test"] else ""
    print(
        f"evaluate: {model}: train accuracy {r['train']['accuracy']:.4f}; test accuracy "
        f"{r['test']['accuracy']:.4f}, macro-F1 {r['test']['macro_f1']:.4f}{top5}"
    )
    info = result.checkpoint["model_config"].get("info", {})
    if model == "vit" and not info.get("pretrained", True):
        print("evaluate: WARNING: the probe's backbone has random weights (train_vit.pretrained = false)")
    elif model == "vit" and weights_label(info):
        print(f"evaluate: vit: {weights_label(info)}")


if __name__ == "__main__":
    run_model_stage("evaluate", main)
