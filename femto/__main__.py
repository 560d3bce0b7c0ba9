"""`python -m femto` is the `femto` command."""

from femto.cli import main

main()
