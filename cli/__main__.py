"""Allow `python -m semiofed.cli`."""

from semiofed.cli.main import main

main()
