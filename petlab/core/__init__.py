"""core: what every phase uses: the params schema, atomic outputs, a stage's run and its one-line errors, the
process (seeds, ranks, threads), the device and its precision, metrics, checksums, resumable state.

Imports no other phase.
"""
