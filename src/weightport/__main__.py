"""``python -m weightport`` is the ``weightport`` command."""

from weightport.cli import main

main()
