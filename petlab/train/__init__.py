"""train: the one training loop (train_one_epoch, validate, fit), the two recipes on it (the CNN from scratch; the
probe: L-BFGS on cached features, or the loop), what a trained model saves and how it is loaded back, and the
sanity stage's overfit check.

May import: core, data, prepare, models.
"""
