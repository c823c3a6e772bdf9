"""study: the study's grid of cells (seeds x training-set sizes, both models): its pipeline file, each cell's
subset, budget, recipe and record. `python -m petlab.study` writes study/dvc.yaml.

May import: core, data, prepare, models, train, probe, sanity, measure.
"""
