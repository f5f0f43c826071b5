"""``python -m buildflow.cli``."""

from buildflow.cli import main

main()
