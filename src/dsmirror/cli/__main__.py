"""``python -m dsmirror.cli``."""

from . import main

main()
