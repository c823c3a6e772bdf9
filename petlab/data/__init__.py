"""data: the prepared dataset as the stages after prepare read it: its images, their transforms, and the loaders
that batch them (sharded over ranks).

May import: core. Knows nothing of how the dataset was made (prepare), so reading it re-runs nothing when a
dataset reader changes.
"""
