"""The hospital's Flower side: the ClientApp, its egress policy, and the SuperNode that carries it."""
