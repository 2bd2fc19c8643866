"""``python -m dsmirror.cli``."""

from dsmirror.cli import main

main()
