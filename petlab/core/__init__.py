"""core: what every phase uses: the params schema, atomic outputs, a stage's run and its one-line errors, the
process (seeds, ranks, threads), the device and its precision, the prepared dataset's split names, metrics and
calibration scores, checksums, resumable state.

Imports no other phase.
"""
