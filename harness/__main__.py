import signal
import sys

from harness import interrupts

interrupts.catch_early()  # before the slow imports: a Ctrl-C or SIGTERM from now on is never lost

from harness.cli import main  # noqa: E402

code = main()
# The run has ended and its report is written: a signal while the interpreter exits changes
# nothing (Python would otherwise restore the default action and die of it, exit -2/-15).
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, signal.SIG_IGN)
sys.exit(code)
