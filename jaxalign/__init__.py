"""jaxalign: RL post-training for alignment (RLEV, GTAlign, WaltzRL) on one sharded JAX core."""

__version__ = "0.1.0"
