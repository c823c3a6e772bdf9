"""Stage profile@MODEL (cnn, vit): torch.profiler over one model's real training steps, and its cost (the report sets
the two side by side)."""

import os

# torch's memory profiling logs "CPUAllocator.cpp:245 Memory block of unknown size was allocated before the
# profiling started ..." (a C++ warning, not a Python one) whenever a block allocated before profiling (the model,
# the data) is freed during it, i.e. on every run. c10 reads its log level once, when torch loads, so this stage
# sets it first, before anything imports torch; set TORCH_CPP_LOG_LEVEL yourself to see such lines.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from petlab.core import paths
from petlab.core.outputs import write_json
from petlab.core.stage import run_model_stage
from petlab.measure.profiling import profile_trained
from petlab.train.run import setup_stage


def main(model: str) -> None:
    params, data = setup_stage(paths.DATA)
    result = profile_trained(model, paths.checkpoint(model), params, data, paths.PROFILE_TRACES / model)
    write_json(paths.PROFILE_PLOTS / f"top_ops_{model}.json", {model: result.pop("top_ops")})
    write_json(paths.PROFILE_METRICS / f"{model}.json", {model: result})
    print(
        f"profile: {model}: {result['step_ms_mean']:.1f} ms/step (p95 {result['step_ms_p95']:.1f}), "
        f"{result['throughput_images_per_s']:.0f} images/s, {result['gflops_per_image']:.3f} GFLOPs/image"
    )


if __name__ == "__main__":
    run_model_stage("profile", main, live_dir=str(paths.PROFILE_TRACES / "{model}"))
