"""train: the one training loop (train_one_epoch, validate, fit), the CNN's recipe on it, and what a trained model
saves and how it is loaded back (run), which the probe's recipe shares.

May import: core, data, prepare, models. Holds no probe code, so a change to the probe re-trains no CNN.
"""
