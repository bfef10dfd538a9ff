"""Command-line flags for training runs that tests can afford: a 2×16 network on a small grid."""

TINY = [
    "--set", "network.width=16",
    "--set", "network.depth=2",
    "--set", "ctm.pool_size=256",
    "--set", "ctm.grid_points=12",
    "--batch-size", "64",
    "--no-progress",
]  # fmt: skip
