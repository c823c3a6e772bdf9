"""figures: the pictures, drawn from numbers the other phases computed: class counts, sample grids, curves,
confusion matrices, reliability and robustness, the profile comparison; and the models' names in their legends.

May import: core, data, prepare, models, train, probe, sanity, measure, study (it uses core alone, so that drawing a figure
imports no training code).
"""
