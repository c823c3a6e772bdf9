"""petlab: the library behind the pipeline's stages (stages/), in one package per phase of the pipeline.

Imports run one way, down this list: a phase imports its own modules and those of the phases before it, never one
after it (tests/test_project_imports.py checks it). The order is the imports', not the pipeline's: the sanity stage runs
before training, but its overfit check runs the training loop, so sanity sits above train. The stages, at the top, wire the phases together.
"""

PHASES = ("core", "data", "prepare", "models", "train", "probe", "sanity", "measure", "study", "figures", "report")
