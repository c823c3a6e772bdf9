"""prepare: the dataset made: its sources (Oxford-IIIT Pet and the others), their downloads, the images resized
and the train/val/test splits written in the layout petlab.data reads.

May import: core (it reads no prepared data, so the stage that makes it re-runs for no change to reading it).
"""
