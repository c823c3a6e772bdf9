"""Stage prepare_oxford_pets: the dataset (data.dataset) as RGB JPEG ImageFolder trees data/oxford_pets/{train,val,test}.

The stage and folder keep their names whatever the dataset, so no later stage knows which one it sees.
"""

from petlab.core import paths
from petlab.core.params import load_params
from petlab.core.stage import run_stage
from petlab.prepare.splits import prepare_dataset


def main() -> None:
    params = load_params()
    report = prepare_dataset(params.data, params.seed, paths.DATA)
    print(
        f"prepare_oxford_pets: {report['images_written']} images written to {paths.DATA}, "
        f"{report['images_skipped']} skipped, {report['left_out_count']} source files left out (listed in "
        f"report.json), converted to RGB: {report['converted_to_rgb'] or 'none'}, EXIF-rotated: "
        f"{report['exif_rotated']}, resized to fit JPEG: {report['resized_to_fit_jpeg']}"
    )


if __name__ == "__main__":
    run_stage("prepare_oxford_pets", main)
