"""``python -m dsmirror``."""

from dsmirror.cli import main

main()
