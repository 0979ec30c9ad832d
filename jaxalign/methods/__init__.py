"""Alignment methods; importing this package registers the built-in ones in `METHODS`."""

from jaxalign.methods import gtalign  # noqa: F401  (registers "gtalign")
from jaxalign.methods import rlev  # noqa: F401  (registers "rlev")
from jaxalign.methods import toy  # noqa: F401  (registers the toy methods, e.g. "toy_token")
from jaxalign.methods import waltzrl  # noqa: F401  (registers "waltzrl")
from jaxalign.methods.base import METHODS, Method, build_method, get_method, register

__all__ = ["METHODS", "Method", "build_method", "get_method", "register"]
