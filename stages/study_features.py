"""Stage study_features: every train, val and test image through the frozen backbone, once for all probe cells
(petlab/study/features.py); study/cells/features.json records the backbone, its cost and the wall seconds."""

from petlab.core import paths
from petlab.core.layout import SPLITS
from petlab.core.outputs import check_writable, write_json
from petlab.core.params import load_params
from petlab.core.stage import run_stage
from petlab.probe.features import save_feature_cache
from petlab.study.cells import FEATURES_RECORD, check_pipeline_copy, machine, timing_path
from petlab.study.features import extract_study_features
from petlab.train.run import setup_stage


def main() -> None:
    check_pipeline_copy(load_params().study)
    check_writable([paths.STUDY_FEATURES, FEATURES_RECORD])
    params, data = setup_stage(paths.DATA)
    result = extract_study_features(params, data, paths.BACKBONE)
    save_feature_cache(paths.STUDY_FEATURES, result.features, result.info)
    write_json(FEATURES_RECORD, result.record)
    if not result.record["pretrained"]:
        print("study_features: WARNING: random backbone weights (train_vit.pretrained = false); not the real result")
    counts = result.record["images"]
    print(f"study_features: {', '.join(f'{counts[s]} {s}' for s in SPLITS)} images -> {paths.STUDY_FEATURES}")


if __name__ == "__main__":
    run_stage("study_features", main, timing_file=timing_path("study_features"), timing_extra={"machine": machine()})
