"""measure: numbers about trained models: test metrics and per-image predictions (with their calibration, from
core), robustness under corruption, and the profiler's timings. It returns and writes numbers; words and figures are drawn
from them by figures and report.

May import: core, data, prepare, models, train, probe, sanity.
"""
