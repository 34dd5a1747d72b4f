"""The coordinator's Flower side: the ServerApp, its strategy, and the simulation engine wrapper."""
