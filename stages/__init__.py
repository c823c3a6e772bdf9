"""One module per DVC stage, run as `python -m stages.<stage>`; each reads params, calls petlab, writes outputs."""

import os
import signal
import sys
from pathlib import Path

# Started as `python -m stages.<stage>` (Python sets argv[0] to "-m" while it locates the module), and Ctrl-C
# not ignored by whoever started us (as for background jobs).
if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:

    def _interrupted_while_starting(signum, frame):
        # Ctrl-C while torch and friends are still importing: one line, not a traceback out of the import
        # machinery. An exception raised mid-import can leave libraries half-initialised and failing noisily,
        # and nothing is written yet, so exit at once. Once the stage runs, run_stage takes Ctrl-C over.
        print(f"{Path(sys.argv[0]).stem}: interrupted while starting; nothing was written", file=sys.stderr, flush=True)
        os._exit(130)

    signal.signal(signal.SIGINT, _interrupted_while_starting)
