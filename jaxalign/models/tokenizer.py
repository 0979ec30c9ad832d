"""Tokenizer: a thin wrapper over a transformers fast tokenizer, from a HF directory or a GGUF file.

Only local files are read (no hub downloads, no remote code). Building a tokenizer from a GGUF parses
the whole vocabulary, so tokenizers are cached per file.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class Tokenizer:
    """Text <-> token ids, chat templates and the special ids the sampler and trainer need."""

    def __init__(self, hf_tokenizer: Any, extra_eos_ids: Sequence[int] = ()):
        self.hf = hf_tokenizer
        eos_ids: list[int] = []
        for token_id in [hf_tokenizer.eos_token_id, *extra_eos_ids]:
            if token_id is not None and token_id not in eos_ids:
                eos_ids.append(int(token_id))
        if not eos_ids:
            raise ValueError("tokenizer defines no eos token; cannot detect the end of a response")
        self._eos_ids = tuple(eos_ids)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The tokenizer's eos id followed by any extra eos ids of the generation config."""
        return self._eos_ids

    @property
    def pad_id(self) -> int:
        """Padding id; the (first) eos id when the tokenizer has none."""
        pad = self.hf.pad_token_id
        return int(pad) if pad is not None else self._eos_ids[0]

    @property
    def bos_id(self) -> int | None:
        bos = self.hf.bos_token_id
        return None if bos is None else int(bos)

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (added tokens included)."""
        return len(self.hf)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True
                            ) -> list[int]:
        """Token ids of `messages` rendered with the tokenizer's chat template."""
        if not getattr(self.hf, "chat_template", None):
            raise ValueError("this tokenizer has no chat template; format prompts with encode() instead")
        text = self.hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                           tokenize=False)
        return self.encode(text, add_special_tokens=False)

    @functools.cached_property
    def token_bytes(self) -> tuple[bytes, ...] | None:
        """The exact UTF-8 bytes each token id adds to `decode`'s text (special tokens add none).

        Defined for byte-level BPE tokenizers (Llama 3, Qwen, SmolLM2, GPT-2), whose decoding is a plain
        concatenation; None otherwise. The sampler uses it to check stop strings on device.
        """
        return _byte_level_token_bytes(self)

    def save(self, out_dir: str) -> None:
        """Writes the tokenizer files (tokenizer.json, tokenizer_config.json, ...) to `out_dir`."""
        self.hf.save_pretrained(out_dir)


def _byte_to_unicode() -> dict[int, str]:
    """The byte <-> printable character map of byte-level BPE vocabularies (as in GPT-2)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_level_token_bytes(tokenizer: Tokenizer) -> tuple[bytes, ...] | None:
    hf = tokenizer.hf
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None or not type(backend.decoder).__name__ == "ByteLevel":
        return None
    if getattr(hf, "clean_up_tokenization_spaces", False):
        return None  # decode rewrites spaces, so the text is not a concatenation of token bytes
    char_to_byte = {c: b for b, c in _byte_to_unicode().items()}
    added = {int(i): t for i, t in hf.added_tokens_decoder.items()}
    pieces = hf.convert_ids_to_tokens(list(range(len(hf))))
    out: list[bytes] = []
    for token_id, piece in enumerate(pieces):
        if token_id in added:
            out.append(b"" if added[token_id].special else added[token_id].content.encode("utf-8"))
        elif piece is None:
            out.append(b"")
        elif all(c in char_to_byte for c in piece):
            out.append(bytes(char_to_byte[c] for c in piece))
        else:
            return None
    # Self-check on mixed text: a tokenizer with extra decoding steps is caught here.
    probe = tokenizer.encode("Probe: naïve café, 3.14 </tag>\n\t€ 😀 end")
    if b"".join(out[i] for i in probe) != tokenizer.decode(probe).encode("utf-8"):
        return None
    return tuple(out)


def _generation_eos_ids(directory: str) -> list[int]:
    path = os.path.join(directory, "generation_config.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        eos = json.load(f).get("eos_token_id")
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(i) for i in eos]


@functools.lru_cache(maxsize=8)
def tokenizer_from_hf_dir(directory: str) -> Tokenizer:
    """Tokenizer of a local HF model directory (fast tokenizer files required)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = os.path.abspath(directory)
    if not any(os.path.isfile(os.path.join(directory, name)) for name in _TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {directory!r}")
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        # tokenizer.json is the complete pipeline; loading it as is avoids AutoTokenizer rebuilding a
        # model-specific class from the vocabulary (which can change the pre-tokenizer).
        hf_tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
    else:
        hf_tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True,
                                                     trust_remote_code=False)
    return Tokenizer(hf_tokenizer, _generation_eos_ids(directory))


@functools.lru_cache(maxsize=4)
def tokenizer_from_gguf(path: str) -> Tokenizer:
    """Tokenizer embedded in a GGUF file (its vocabulary, merges and chat template)."""
    from transformers import AutoTokenizer

    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} not found")
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                     local_files_only=True, trust_remote_code=False)
    except (KeyError, ValueError) as err:
        raise ValueError(f"GGUF file {path!r} holds no usable tokenizer: {err}") from err
    return Tokenizer(hf_tokenizer)
