"""Toy methods for smoke tests of the training loop on random models without a tokenizer."""

from jaxalign.methods.toy import token  # noqa: F401  (registers "toy_token")
from jaxalign.methods.toy import two_agent  # noqa: F401  (registers "two_agent_toy")
