"""The `semiofed` command line: wires the role commands, turns errors into one line."""
