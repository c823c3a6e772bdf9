"""petlab: the library behind the pipeline's stages (stages/), in one package per phase of the pipeline.

Imports run one way, down this list: a phase imports its own modules and those of the phases before it, never one
after it (tests/test_project_imports.py checks it). The stages, at the top, wire the phases together.
"""

PHASES = ("core", "data", "prepare", "models", "train", "measure", "study", "figures", "report")
