"""prepare: the dataset made and checked: its sources (Oxford-IIIT Pet and the others), their downloads, the
train/val/test splits written in the layout petlab.data reads, and the sanity checks on them.

May import: core, data.
"""
