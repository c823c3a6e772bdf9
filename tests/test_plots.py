"""The figures stay readable: legends beside the bars, widths that fit `dvc plots show`, titles that say what ran."""

from petlab import plots
from petlab.evaluation import confusion_labels

PROFILE = {"step_ms_mean": 400.0, "throughput_images_per_s": 80.0, "peak_memory_mb": 2000.0, "gflops_per_image": 1.2,
           "trainable_parameters": 100000}


def test_class_counts_legend_does_not_cover_the_bars():
    names = [f"class {i}" for i in range(37)]
    fig = plots.class_counts_figure({"train": {n: 80 for n in names}, "val": {n: 20 for n in names},
                                     "test": {n: 99 for n in names}}, names)
    fig.canvas.draw()
    (ax,) = fig.axes
    assert ax.get_legend().get_window_extent().y0 >= ax.get_window_extent().y1  # above the plotting area


def test_profile_comparison_fits_dvc_plots_page():
    fig = plots.profile_comparison_figure({"cnn": PROFILE, "vit": PROFILE})
    assert fig.get_size_inches()[0] * 110 <= 1000  # pixels at save_figure's dpi


def test_confusion_labels_sort_as_text_in_label_order():
    names = ["Yorkshire", "Abyssinian"] + [f"c{i}" for i in range(9)]
    labels = confusion_labels(names)
    assert labels[:2] == ["00 Yorkshire", "01 Abyssinian"] and sorted(labels) == labels


def test_figure_titles_name_the_probe_model_and_random_weights():
    from stages.evaluate import title

    probe = {"kind": "timm_probe", "timm_model": "resnet18", "info": {"pretrained": False}}
    assert title({"model_config": probe}) == "Linear probe on frozen resnet18, random weights"
    probe["info"]["pretrained"] = True
    assert title({"model_config": probe}) == "Linear probe on frozen resnet18"
    assert "CNN" in title({"model_config": {"kind": "simple_cnn"}})
