"""Test set-up: fake 8 CPU devices before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402  (after the XLA flags above)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory):
    """An HF directory with a tiny random Llama and SmolLM2's real tokenizer and chat template: a text
    model that runs in seconds (its replies are random tokens)."""
    from jaxalign.models import export_hf, gguf, load_model
    from jaxalign.models.config import get_preset
    from jaxalign.models.tokenizer import tokenizer_from_gguf
    from jaxalign.sharding import create_sharded, make_mesh

    import jax

    tokenizer = tokenizer_from_gguf(gguf.default_gguf_path())
    cfg = get_preset("tiny", vocab_size=tokenizer.vocab_size, max_position_embeddings=2048)
    model = create_sharded(cfg, make_mesh(data=1, devices=jax.devices()[:1]), "train", seed=0)
    out = tmp_path_factory.mktemp("tiny_chat") / "model"
    export_hf(model, tokenizer, str(out))
    load_model(str(out))  # fails here, not in a test, if the directory is unusable
    return str(out)
