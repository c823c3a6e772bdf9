"""A full disk for the stage a test starts with this folder on PYTHONPATH (Python imports sitecustomize at start-up).

Every file opened for writing under $PETLAB_TEST_FULL_DISK is created, as on a full disk, but its descriptor is then
/dev/full's: each write the kernel is asked for fails with ENOSPC, as it does when a disk fills up, and the OSError
Python raises names no file. Files opened for reading, and everything outside that folder, are untouched."""

import builtins
import io
import os

FULL = os.environ.get("PETLAB_TEST_FULL_DISK")

if FULL:
    _root = os.path.realpath(FULL)
    _real_open = builtins.open

    def _full_disk_open(file, mode="r", *args, **kwargs):
        f = _real_open(file, mode, *args, **kwargs)
        writing = any(flag in mode for flag in "wax+")
        if writing and isinstance(file, (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(file))
            if path == _root or path.startswith(_root + os.sep):
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, f.fileno())
                os.close(full)
        return f

    builtins.open = io.open = _full_disk_open
