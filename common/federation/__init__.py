"""What sites and coordinator agree on for a run (run config, message keys) and the Flower processes they start."""
