"""``python -m advinf``: the same as the ``advinf`` command."""

from advinf.cli import main

main()
