"""probe: the linear probe on the frozen backbone: the backbone's features extracted and cached, the L-BFGS
logistic fit over a grid of weight decays (logistic), and the recipe that trains it that way or through the
training loop (recipe).

May import: core, data, prepare, models, train.
"""
