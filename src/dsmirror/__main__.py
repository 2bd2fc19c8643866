"""``python -m dsmirror``."""

from .cli import main

main()
