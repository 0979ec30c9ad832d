"""WaltzRL (arXiv 2510.08240): a conversation agent and a feedback agent trained together.

Layout: `config.py` (the `waltzrl` section), `data.py` + `embedded.py` (WildJailbreak / OR-Bench loaders and
the embedded offline set), `prompts.py` (both agents' prompts), `judges.py` (rule, WildGuard-format and
Qwen3Guard-format safety judges), `rewards.py` (R_c, DIR, R_f, reduction choices, metrics), `episode.py`
(the collaboration protocol), `method.py` (the registered method "waltzrl").
"""

from jaxalign.methods.waltzrl.config import WaltzRLConfig
from jaxalign.methods.waltzrl.method import WaltzRLMethod

__all__ = ["WaltzRLConfig", "WaltzRLMethod"]
