"""report: the comparison told: the statistics behind each claim (paired intervals, the study's tests), the
rules that turn them into sentences (verdict), and the single run's and the study's reports.

May import: every phase before it. Its stages' closures hold no training, download or distributed code.
"""
