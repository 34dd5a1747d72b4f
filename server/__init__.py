"""The coordinator: Flower ServerApp, strategies, run launcher, reports."""
