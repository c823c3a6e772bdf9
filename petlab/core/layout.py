"""The prepared dataset's splits, shared by the module that writes the layout (petlab.prepare.splits, whose docstring
draws it) and those that read it (petlab.data, petlab.sanity).

Kept apart from petlab.prepare.splits so that reading prepared data does not import the dataset readers (petlab.prepare.sources)
that wrote it: the stages after prepare depend on the prepared data, not on how it was made.
"""

SPLITS = ("train", "val", "test")
