import sys

from harness.campaign import interrupts

interrupts.catch_early()  # before the slow imports: a Ctrl-C or SIGTERM from now on is never lost

from harness.cli import main  # noqa: E402

sys.exit(main())
