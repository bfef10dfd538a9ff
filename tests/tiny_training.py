"""Command-line flags for training runs that tests can afford: a 2×16 network on a small grid.

The default network is monotone: its conditioner is the 2×16 MLP, and it sums 16 tanh units
(network.units; 64 by default). With --set network.kind="mlp" the 2×16 is the plain MLP.
"""

TINY = [
    "--set", "network.width=16",
    "--set", "network.depth=2",
    "--set", "network.units=16",
    "--set", "ctm.pool_size=256",
    "--set", "ctm.grid_points=12",
    "--batch-size", "64",
    "--no-progress",
]  # fmt: skip
