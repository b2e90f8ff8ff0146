"""supervisord in this process, with an exit status that says why it stopped.

    run_supervisord.py [supervisord options...]

supervisord exits 0 however it stops. When a program went FATAL, the ``exit-on-fatal``
listener (scripts/supervisor_events.py) writes a marker file and stops supervisord; this
wrapper then exits 1, so `restart: on-failure` and anything else keyed on exit codes restarts
the container. A plain `docker stop` still ends with 0.

Runs supervisord's own ``main`` in-process, so the process that entrypoint.sh execs stays
supervisord (PID 1 in the container: it receives SIGTERM and reaps orphans).
"""

from __future__ import annotations

import os
import sys

from supervisor import supervisord
from supervisor_events import fatal_marker

EXIT_PROGRAM_FATAL = 1


def main(argv: list[str]) -> int:
    marker = fatal_marker()
    # A restarted container keeps its filesystem: a marker from the last run is not news.
    if os.path.exists(marker):
        os.remove(marker)
    supervisord.main(argv)
    try:
        with open(marker, encoding="utf-8") as file:
            program = file.read().strip() or "?"
    except FileNotFoundError:
        return 0
    print(
        f"llm-service: exiting with status {EXIT_PROGRAM_FATAL}: program {program} went FATAL",
        file=sys.stderr,
    )
    return EXIT_PROGRAM_FATAL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
