"""sanity: the sanity stage's checks: the prepared data (every image decodes, counts per class and split, no image
in two splits; checks) and each model overfitting a few batches through the training loop (overfit).

May import: core, data, prepare, models, train, probe. Apart from prepare and train, so that a change to a check
neither re-makes the dataset nor re-trains a model.
"""
