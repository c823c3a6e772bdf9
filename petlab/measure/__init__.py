"""measure: numbers about trained models: test metrics and per-image predictions, calibration, robustness under
corruption, and the profiler's timings and costs. It returns and writes numbers; words and figures are drawn
from them by figures and report.

May import: core, data, prepare, models, train.
"""
