"""``python -m jobs score|features ...``: the jobs' command line (``jobs.cli``)."""

from jobs.cli import main

raise SystemExit(main())
