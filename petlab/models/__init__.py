"""models: what is trained: the CNN and its variants, the pretrained backbone with the probe's head and where its
weights come from, the stand-in weights; a registry builds any of them from the config a checkpoint records and
counts a model's parameters and forward FLOPs.

May import: core, data, prepare (it uses none of prepare). Imports its model modules here so that every builder is
registered before create_model looks one up.
"""

from petlab.models import backbone, cnn  # noqa: F401  (they register their builders)
