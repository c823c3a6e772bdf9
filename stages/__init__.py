"""One module per DVC stage, run as `python -m stages.<stage>`; each reads params, calls petlab, writes outputs."""
