"""`python -m femto.cli` is the `femto` command."""

from femto.cli import main

main()
