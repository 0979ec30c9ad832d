"""The rollout engine: jitted prefill plus a `lax.while_loop` decode over a preallocated KV cache.

Data flow of `Sampler.generate` (one call = one batch of prompts):

1. Host: prompts are left-padded to a bucketed width (multiple of `prompt_bucket`) and the prompt count
   is padded to a bucket (power of two up to 64, then multiples of 64, always a multiple of the mesh's
   data-parallel size), so a training run compiles once and chat use compiles a handful of times.
2. Device, `prefill` (jit): one forward pass per *prompt* writes its keys/values; the cache rows are then
   repeated `n` times and grown to `prompt width + response bucket` slots, so the prompt is never
   recomputed per sample.
3. Device, `decode` (jit, cache donated): draws the first token from the prefill logits, then a
   `lax.while_loop` feeds one token per step, updates the cache in place and stops early once every
   sequence has hit a stop id, a stop string (matched on the decoded bytes, see `stop_strings`) or
   `max_new_tokens`. Nothing leaves the device inside the loop.
4. Host: the outputs are cut to the real samples, texts decoded and cut after their stop string
   (`results.assemble_rollout`).

Sharding: batch over ("data", "fsdp"), heads and kv heads over "tensor" (falling back to replication when
a dimension does not divide); the same code runs on one CPU, many fake CPU devices or a GPU.
"""

from __future__ import annotations

import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxalign import sharding as sharding_lib
from jaxalign.models import lora as lora_lib
from jaxalign.models.transformer import KVCache, causal_attention_mask, positions_from_mask
from jaxalign.rollout import prompts as prompts_lib
from jaxalign.rollout import stop_strings as stop_lib
from jaxalign.rollout.results import Rollout, assemble_rollout
from jaxalign.rollout.sampling import SamplingParams, is_stop_token, per_sample_keys, sample_tokens

RESPONSE_BUCKET = 32
LORA_MODES = ("adapters", "merged")
_STOP_IDS_BUCKET = 8


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def bucket_batch(count: int, multiple: int) -> int:
    """Padded batch size: next power of two up to 64, then a multiple of 64; a multiple of `multiple`."""
    bucket = 1 << max(count - 1, 0).bit_length() if count <= 64 else round_up(count, 64)
    return round_up(bucket, multiple)


# ----------------------------------------------------------------------------------------------------
# Pure device functions (jitted by the Sampler; also used directly by tests)
# ----------------------------------------------------------------------------------------------------


def prefill(graphdef, params, prompt_ids_bp, prompt_mask_bp, *, n: int, cache_len: int, cache_dtype,
            cache_sharding=None) -> tuple[KVCache, jax.Array]:
    """Runs the prompts once and returns `(cache, last_logits)` for `n` samples per prompt.

    The cache has `b * n` rows (prompt i's rows are `i*n .. i*n + n - 1`) and `cache_len` slots; slots
    `[0, p)` hold the prompt, the rest are zero. `last_logits` [b * n, v] float32 are the logits after
    the last prompt token (prompts are left-padded, so it sits at slot p - 1).
    """
    model = nnx.merge(graphdef, params)
    b, p = prompt_ids_bp.shape
    cache = KVCache.init(model.cfg, b, p, cache_dtype)
    hidden_bpd, cache = model(prompt_ids_bp, positions_from_mask(prompt_mask_bp),
                              causal_attention_mask(prompt_mask_bp), cache=cache, cache_index=0)
    last_logits_bv = model.unembed(hidden_bpd[:, -1:])[:, 0]

    def grow(x_lbske):
        x_lbske = jnp.repeat(x_lbske, n, axis=1)
        return jnp.pad(x_lbske, ((0, 0), (0, 0), (0, cache_len - p), (0, 0), (0, 0)))

    cache = jax.tree.map(grow, cache)
    if cache_sharding is not None:
        cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
    return cache, jnp.repeat(last_logits_bv, n, axis=0)


def decode_step(graphdef, params, cache: KVCache, tokens_b, positions_b, slot, valid_bs
                ) -> tuple[jax.Array, KVCache]:
    """Feeds one token per row at cache slot `slot`; returns (float32 logits_bv, updated cache).

    `valid_bs` marks the cache slots each row may attend to (its prompt and its tokens so far,
    including the one written now).
    """
    model = nnx.merge(graphdef, params)
    hidden_b1d, cache = model(tokens_b[:, None], positions_b[:, None], valid_bs[:, None, :],
                              cache=cache, cache_index=slot)
    return model.unembed(hidden_b1d)[:, 0], cache


def decode(graphdef, params, cache: KVCache, first_logits_bv, prompt_mask_bp, live_b, key, temperature,
           top_p, max_new_tokens, stop_ids_s, pad_id, stop_bytes: stop_lib.StopBytes | None = None, *,
           greedy: bool, top_k: int, use_top_p: bool, response_len: int, batch_sharding=None
           ) -> dict[str, jax.Array]:
    """Samples up to `max_new_tokens` (<= `response_len`) tokens per row inside one `while_loop`.

    Rows with `live_b` False (batch padding) are done from the start. Sample `i`'s draw at step `j`
    uses `fold_in(fold_in(key, i), j)`, so it does not depend on the batch it is in. With `stop_bytes`,
    a row is also done on the token that completes a stop string. Returns tokens_br, logprobs_br,
    lengths_b (tokens generated, stop token included), stopped_b (ended by a stop id), string_stop_b
    (ended by a stop string) and steps (loop trips + 1), plus the final cache.
    """
    b, p = prompt_mask_bp.shape
    prompt_len_b = jnp.sum(prompt_mask_bp, axis=-1).astype(jnp.int32)
    prompt_valid_bp = prompt_mask_bp.astype(bool)
    sample_ids_b = jnp.arange(b, dtype=jnp.int32)
    response_slots_r = jnp.arange(response_len, dtype=jnp.int32)

    def constrain(x):
        return x if batch_sharding is None else jax.lax.with_sharding_constraint(x, batch_sharding)

    def draw(logits_bv, step):
        keys_b = None if greedy else per_sample_keys(key, sample_ids_b, step)
        return sample_tokens(logits_bv, keys_b, temperature=temperature, top_k=top_k,
                             top_p=top_p if use_top_p else None, greedy=greedy)

    first_b, first_logp_b = draw(first_logits_bv, 0)
    first_b = jnp.where(live_b, first_b, pad_id)
    first_stop_b = live_b & is_stop_token(first_b, stop_ids_s)

    def string_hits(window_bw, token_b, active_b):
        if stop_bytes is None:
            return window_bw, jnp.zeros_like(active_b)
        window_bw, hit_b = stop_lib.advance(window_bw, token_b, stop_bytes)
        return constrain(window_bw), active_b & hit_b

    window_bw, first_string_b = string_hits(
        None if stop_bytes is None else constrain(stop_lib.empty_window(b, stop_bytes)),
        first_b, live_b & ~first_stop_b)
    state = dict(
        step=jnp.int32(1),
        cache=cache,
        tokens_br=constrain(jnp.full((b, response_len), pad_id, jnp.int32).at[:, 0].set(first_b)),
        logprobs_br=constrain(jnp.zeros((b, response_len), jnp.float32)
                              .at[:, 0].set(jnp.where(live_b, first_logp_b, 0.0))),
        last_b=first_b,
        done_b=~live_b | first_stop_b | first_string_b | (max_new_tokens <= 1),
        lengths_b=live_b.astype(jnp.int32),
        stopped_b=first_stop_b,
        string_stop_b=first_string_b,
        window_bw=window_bw,
    )

    def keep_going(s):
        return (s["step"] < max_new_tokens) & ~jnp.all(s["done_b"])

    def one_step(s):
        step = s["step"]
        # The token drawn at step-1 goes to slot p + step - 1; every row sees its prompt and all of its
        # response slots up to that one.
        valid_bs = jnp.concatenate(
            [prompt_valid_bp, jnp.broadcast_to(response_slots_r < step, (b, response_len))], axis=1)
        logits_bv, cache = decode_step(graphdef, params, s["cache"], s["last_b"],
                                       prompt_len_b + step - 1, p + step - 1, valid_bs)
        token_b, logp_b = draw(logits_bv, step)
        active_b = ~s["done_b"]
        token_b = jnp.where(active_b, token_b, pad_id)
        hit_stop_b = active_b & is_stop_token(token_b, stop_ids_s)
        window_bw, hit_string_b = string_hits(s["window_bw"], token_b, active_b & ~hit_stop_b)
        return dict(
            step=step + 1,
            cache=cache,
            tokens_br=jax.lax.dynamic_update_index_in_dim(s["tokens_br"], token_b, step, axis=1),
            logprobs_br=jax.lax.dynamic_update_index_in_dim(
                s["logprobs_br"], jnp.where(active_b, logp_b, 0.0), step, axis=1),
            last_b=token_b,
            done_b=s["done_b"] | hit_stop_b | hit_string_b | (step + 1 >= max_new_tokens),
            lengths_b=s["lengths_b"] + active_b.astype(jnp.int32),
            stopped_b=s["stopped_b"] | hit_stop_b,
            string_stop_b=s["string_stop_b"] | hit_string_b,
            window_bw=window_bw,
        )

    final = jax.lax.while_loop(keep_going, one_step, state)
    outputs = dict(tokens_br=final["tokens_br"], logprobs_br=final["logprobs_br"],
                   lengths_b=final["lengths_b"], stopped_b=final["stopped_b"],
                   string_stop_b=final["string_stop_b"], steps=final["step"])
    # Returning the cache lets XLA alias the donated input buffer to it: the loop then updates the
    # cache in place with no initial copy.
    return outputs, final["cache"]


# Module-level jits so every Sampler of the same model shares compiled programs (keyed by the
# graphdef, shapes and static options).
_prefill_jit = jax.jit(prefill, static_argnums=0,
                       static_argnames=("n", "cache_len", "cache_dtype", "cache_sharding"))
_decode_jit = jax.jit(decode, static_argnums=0, donate_argnums=2,
                      static_argnames=("greedy", "top_k", "use_top_p", "response_len", "batch_sharding"))


COMPUTE = "compute"  # `Sampler(param_dtype=COMPUTE)`: weights in the compute dtype, norm scales as stored


def is_norm_path(path) -> bool:
    """Whether a parameter path names an RMSNorm scale (`attn_norm`, `mlp_norm`, `q_norm`, `k_norm`,
    `final_norm`): the forward reads those in float32, every other weight in the compute dtype."""
    names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]  # (an nnx.Variable adds .value)
    return bool(names) and names[-1].endswith("norm")


def _copy_params(params, dtype, *, compute_dtype=None):
    """A fresh copy of the parameters, so later donation by a trainer is harmless: cast to `dtype` when
    given, or with `dtype=COMPUTE` every floating weight except the norm scales to `compute_dtype` (the
    dtype the forward pass casts them to anyway, so decoding is unchanged)."""

    def copy(path, x):
        target = dtype
        if isinstance(dtype, str):  # COMPUTE
            target = None if is_norm_path(path) else compute_dtype
        if target is not None and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(target) if x.dtype != target else jnp.copy(x)
        return jnp.copy(x)

    return jax.tree_util.tree_map_with_path(copy, params)


# ----------------------------------------------------------------------------------------------------
# The Sampler
# ----------------------------------------------------------------------------------------------------


class Sampler:
    """Generates rollouts from an nnx `Transformer` (see the module docstring for the data flow).

    Args:
      model: the policy (`jaxalign.models.Transformer`); its weights are copied into the sampler's
        layout (`update_params` refreshes them).
      tokenizer: `jaxalign.models.Tokenizer` (EOS ids, pad id, decoding, chat template); None for
        benchmarks on token ids (then EOS must come from `stop_token_ids` and texts are empty).
      mesh: a ("data", "fsdp", "tensor") mesh, or None for the default device.
      max_prompt_len: longest prompt accepted (tokens).
      cache_dtype: KV cache dtype (bfloat16 halves cache memory and bandwidth; float32 for parity).
      param_dtype: dtype of the sampler's weight copy. "compute" (default): every weight that the forward
        pass casts to the compute dtype (`model.cfg.dtype`) is stored in it, the norm scales (read in
        float32) as they are, so decoding gives the same tokens and log-probs as from the model's own
        weights, and float32 weights with bfloat16 compute take half the memory and bandwidth. None keeps
        the model's dtypes; a dtype (e.g. bfloat16 under float32 compute) casts every floating weight.
        With `lora_mode="adapters"` "compute" keeps the base as given (shared, not copied).
      prompt_bucket: prompts are left-padded to a multiple of this many tokens.
      lora_mode: for a model with LoRA adapters (`jaxalign.models.lora`): "merged" (default, the faster
        decode) keeps one copy of the weights with the adapters folded in (`W + scale A B` in the model's
        compute dtype, in the sample sharding); "adapters" applies them in the
        forward pass on the base weights as they are (shared with the trainer, never copied; only the
        adapters are copied). Unused for a plain model.
    """

    def __init__(self, model, tokenizer=None, *, mesh: Mesh | None = None, max_prompt_len: int = 2048,
                 cache_dtype=jnp.bfloat16, param_dtype=COMPUTE, prompt_bucket: int = 32, lora_mode: str = "merged"):
        if max_prompt_len < 1 or prompt_bucket < 1:
            raise ValueError(f"max_prompt_len ({max_prompt_len}) and prompt_bucket ({prompt_bucket}) "
                             "must be >= 1")
        if lora_mode not in LORA_MODES:
            raise ValueError(f"lora_mode={lora_mode!r}; known: {', '.join(LORA_MODES)}")
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.max_prompt_len = int(max_prompt_len)
        self.prompt_bucket = int(prompt_bucket)
        self.cache_dtype = jnp.dtype(cache_dtype)
        if isinstance(param_dtype, str) and param_dtype == COMPUTE:
            self.param_dtype = COMPUTE
        else:
            self.param_dtype = None if param_dtype is None else jnp.dtype(param_dtype)
        self.graphdef, state = nnx.split(model)
        self._state_structure = jax.tree.structure(state)
        self._leaf_shapes = [tuple(x.shape) for x in jax.tree.leaves(state)]
        self.lora = lora_lib.lora_config_of(model)
        self.lora_mode = None if self.lora is None else lora_mode
        # What the sampler copies: the whole state, only the adapters, or the merged weights.
        copied = state
        if self.lora_mode == "adapters":
            copied = nnx.split_state(state, nnx.LoRAParam, ...)[0]
        elif self.lora_mode == "merged":
            self.graphdef = lora_lib.base_graphdef(model.cfg)
            copied = jax.eval_shape(self._merge, state)
        if mesh is None:
            self.data_parallel = 1
            self._param_shardings = self._batch_sharding = None
        else:
            self.data_parallel = int(mesh.shape["data"] * mesh.shape["fsdp"])
            self._param_shardings = sharding_lib.param_shardings(copied, mesh, "sample")
            self._batch_sharding = sharding_lib.batch_sharding(mesh, 2)
        prepare = functools.partial(_copy_params, dtype=self.param_dtype, compute_dtype=jnp.dtype(self.cfg.dtype))
        if self.lora_mode == "merged":
            prepare = lambda s: _copy_params(self._merge(s), self.param_dtype,  # noqa: E731
                                             compute_dtype=jnp.dtype(self.cfg.dtype))
        self._copy = jax.jit(prepare, out_shardings=self._param_shardings)
        self._base_in = self._base_out = None  # adapters mode: the base last given, and as the sampler uses it
        self.params = self._prepare(state)
        self.last_stats: dict[str, float] = {}
        self._byte_table = None  # built on first use of stop strings; False when not available

    # -- weights ---------------------------------------------------------------------------------------

    def update_params(self, params) -> float:
        """Copies new policy weights (an nnx module or its state) into the sampler's layout on device.

        The copy is a jitted reshard with the sampler's shardings (no host round trip) and owns fresh
        buffers, so the trainer may donate its own. Returns the seconds taken (blocking until done). With
        LoRA adapters, "merged" computes `W + scale A B` into the copy; "adapters" copies only the adapters
        and reads the frozen base in place (which nothing may donate).
        """
        if isinstance(params, nnx.Module):
            params = nnx.state(params)
        leaves = jax.tree.leaves(params)
        shapes = [tuple(x.shape) for x in leaves]
        if shapes != self._leaf_shapes:
            raise ValueError(
                f"update_params: the parameter tree does not match the sampler's model ({len(shapes)} "
                f"arrays vs {len(self._leaf_shapes)}, or different shapes); pass the policy's full nnx "
                "state, e.g. nnx.state(model)")
        # Same leaves in the same order: re-attach the sampler's own tree (its variable metadata).
        params = jax.tree.unflatten(self._state_structure, leaves)
        start = time.perf_counter()
        new_params = jax.block_until_ready(self._prepare(params))
        self.params = new_params
        return time.perf_counter() - start

    def _merge(self, state):
        """LoRA "merged": the plain model's state with `W + scale A B`, stored in the compute dtype (what the
        forward pass casts every weight to; float32 keeps small updates of a bfloat16 base)."""
        return lora_lib.merged_state(state, self.lora, dtype=jnp.dtype(self.cfg.dtype))

    def _prepare(self, state):
        """The sampler's parameters from the policy's full state: a fresh copy (plain model), the merged
        weights (LoRA "merged"), or fresh adapters on the base as given (LoRA "adapters")."""
        if self.lora_mode != "adapters":
            return self._copy(state)
        adapters, base = nnx.split_state(state, nnx.LoRAParam, ...)
        base_leaves = jax.tree.leaves(base)
        if self._base_in is None or any(a is not b for a, b in zip(base_leaves, self._base_in)):
            # The frozen base is used in place; only a cast to `param_dtype` makes a copy (once).
            cast = self.param_dtype is not None and self.param_dtype is not COMPUTE and any(
                jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != self.param_dtype for x in base_leaves)
            self._base_in, self._base_out = base_leaves, (
                jax.jit(functools.partial(_copy_params, dtype=self.param_dtype))(base) if cast else base)
        return nnx.merge_state(self._base_out, self._copy(adapters))

    # -- device layout -------------------------------------------------------------------------------

    def _cache_sharding_for(self, batch: int, slots: int):
        if self.mesh is None:
            return None
        shape = (self.cfg.num_layers, batch, slots, self.cfg.num_kv_heads, self.cfg.head_dim)
        spec = sharding_lib.logical_sharding(("layers", "batch", None, "kv_heads", "head_dim"),
                                             self.mesh, "sample", shape)
        return KVCache(spec, spec)

    def _put_batch(self, array_np: np.ndarray) -> jax.Array:
        return sharding_lib.put_batch(array_np, self.mesh)

    def _stop_ids(self, sp: SamplingParams) -> np.ndarray:
        ids = list(sp.stop_token_ids)
        if sp.include_eos and self.tokenizer is not None:
            ids += [int(t) for t in self.tokenizer.eos_token_ids]
        ids = sorted(set(ids))
        padded = np.full(round_up(max(len(ids), 1), _STOP_IDS_BUCKET), -1, np.int32)
        padded[: len(ids)] = ids
        return padded

    def _stop_bytes(self, sp: SamplingParams) -> stop_lib.StopBytes | None:
        """Device arrays for checking `sp.stop_strings` inside the decode loop, or None (no stop strings,
        or a tokenizer without an exact byte table: then only the host applies them)."""
        if not sp.stop_strings or self.tokenizer is None:
            return None
        if self._byte_table is None:
            token_bytes = getattr(self.tokenizer, "token_bytes", None)
            if token_bytes is None or len(token_bytes) > self.cfg.vocab_size:
                self._byte_table = False
            else:
                tables = stop_lib.byte_table(token_bytes, self.cfg.vocab_size)
                replicated = None if self.mesh is None else sharding_lib.replicated(self.mesh)
                self._byte_table = tuple(jax.device_put(t, replicated) for t in tables)
        if self._byte_table is False:
            return None
        return stop_lib.StopBytes(*self._byte_table, jnp.asarray(stop_lib.encode_stops(sp.stop_strings)))

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_id", None)
        return 0 if pad is None else int(pad)

    # -- generation ------------------------------------------------------------------------------------

    def _validate_prompts(self, prompt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        if len(prompt_ids) == 0:
            raise ValueError("generate: no prompts given")
        checked = []
        for i, ids in enumerate(prompt_ids):
            ids = [int(t) for t in ids]
            if not ids:
                raise ValueError(f"generate: prompt {i} is empty")
            if len(ids) > self.max_prompt_len:
                raise ValueError(f"generate: prompt {i} has {len(ids)} tokens, more than "
                                 f"max_prompt_len={self.max_prompt_len}")
            if min(ids) < 0 or max(ids) >= self.cfg.vocab_size:
                raise ValueError(f"generate: prompt {i} has token ids outside [0, {self.cfg.vocab_size})")
            checked.append(ids)
        return checked

    def generate(self, prompt_ids: Sequence[Sequence[int]], sp: SamplingParams, key: jax.Array) -> Rollout:
        """Samples `sp.n` responses per prompt (token id lists, unpadded) and returns a `Rollout`.

        A prompt may end mid-response (continue-from-prefix): the sampler simply continues it.
        """
        if not isinstance(sp, SamplingParams):
            raise TypeError(f"generate: sp must be SamplingParams, got {type(sp).__name__}")
        prompts = self._validate_prompts(prompt_ids)
        num_prompts, n = len(prompts), sp.n
        batch_prompts = bucket_batch(num_prompts, self.data_parallel)
        width = round_up(max(len(ids) for ids in prompts), self.prompt_bucket)
        response_len = round_up(sp.max_new_tokens, RESPONSE_BUCKET)

        prompt_ids_np = np.full((batch_prompts, width), self.pad_id, np.int32)
        prompt_mask_np = np.zeros((batch_prompts, width), np.int32)
        for i, ids in enumerate(prompts):
            prompt_ids_np[i, width - len(ids):] = ids
            prompt_mask_np[i, width - len(ids):] = 1
        prompt_mask_np[num_prompts:, -1] = 1  # padding prompts: one token, so no row is fully masked
        live_np = np.arange(batch_prompts * n) < num_prompts * n

        start = time.perf_counter()
        cache, first_logits = _prefill_jit(
            self.graphdef, self.params, self._put_batch(prompt_ids_np), self._put_batch(prompt_mask_np),
            n=n, cache_len=width + response_len, cache_dtype=self.cache_dtype,
            cache_sharding=self._cache_sharding_for(batch_prompts * n, width + response_len))
        out, _ = _decode_jit(
            self.graphdef, self.params, cache, first_logits,
            self._put_batch(np.repeat(prompt_mask_np, n, axis=0)), self._put_batch(live_np), key,
            jnp.float32(sp.logprob_temperature), jnp.float32(sp.top_p), jnp.int32(sp.max_new_tokens),
            jnp.asarray(self._stop_ids(sp)), jnp.int32(self.pad_id), self._stop_bytes(sp),
            greedy=sp.greedy, top_k=sp.top_k, use_top_p=sp.top_p < 1.0, response_len=response_len,
            batch_sharding=self._batch_sharding)
        out = sharding_lib.to_host(out)
        elapsed = time.perf_counter() - start

        real, max_new = num_prompts * n, sp.max_new_tokens
        rollout = assemble_rollout(
            prompt_ids_np=np.repeat(prompt_ids_np[:num_prompts], n, axis=0),
            prompt_mask_np=np.repeat(prompt_mask_np[:num_prompts], n, axis=0),
            response_ids_np=out["tokens_br"][:real, :max_new],
            logprobs_np=out["logprobs_br"][:real, :max_new],
            lengths_n=out["lengths_b"][:real],
            ended_by_stop_token_n=out["stopped_b"][:real],
            ended_by_stop_string_n=out["string_stop_b"][:real],
            n=n, stop_strings=sp.stop_strings, tokenizer=self.tokenizer, pad_id=self.pad_id)
        self.last_stats = dict(seconds=elapsed, decode_steps=int(out["steps"]),
                               batch=batch_prompts * n, prompt_width=width,
                               generated_tokens=int(out["lengths_b"][:real].sum()))
        return rollout

    # -- text API --------------------------------------------------------------------------------------

    def _require_tokenizer(self, what: str):
        if self.tokenizer is None:
            raise ValueError(f"{what} needs a tokenizer; this Sampler was built without one")
        return self.tokenizer

    def encode_prompt(self, prompt: str | list[dict], *, chat: bool = True) -> list[int]:
        """Token ids of a prompt: chat messages (or a user string) through the chat template with the
        generation prompt when `chat`, else the plain encoding of a string."""
        return prompts_lib.encode_prompt(self._require_tokenizer("encode_prompt"), prompt, chat=chat)

    def generate_text(self, prompts: Sequence[str | list[dict]], sp: SamplingParams, key: jax.Array, *,
                      chat: bool = True, progress: bool = False, batch_size: int = 64) -> list[list[str]]:
        """Generates `sp.n` texts per prompt, in chunks of `batch_size` prompts (with a progress bar)."""
        tokenizer = self._require_tokenizer("generate_text")
        encoded = [prompts_lib.encode_prompt(tokenizer, p, chat=chat) for p in prompts]
        return self._generate_chunked(encoded, sp, key, progress=progress, batch_size=batch_size)

    def continue_text(self, prompts: Sequence[str | list[dict]], prefixes: Sequence[str],
                      sp: SamplingParams, key: jax.Array, *, chat: bool = True, progress: bool = False,
                      batch_size: int = 64) -> list[list[str]]:
        """Continues responses that were stopped (e.g. at a stop string) and possibly edited on the host.

        Prompt i is encoded as in `generate_text`, the partial response `prefixes[i]` is appended as
        tokens, and generation resumes from there. Returns only the new text; the full response is
        `prefixes[i] + continuation`.
        """
        tokenizer = self._require_tokenizer("continue_text")
        if len(prompts) != len(prefixes):
            raise ValueError(f"continue_text: {len(prompts)} prompts but {len(prefixes)} prefixes")
        encoded = [prompts_lib.encode_prompt(tokenizer, p, chat=chat) + prompts_lib.encode_text(tokenizer, x)
                   for p, x in zip(prompts, prefixes)]
        return self._generate_chunked(encoded, sp, key, progress=progress, batch_size=batch_size)

    def _generate_chunked(self, encoded: list[list[int]], sp: SamplingParams, key: jax.Array, *,
                          progress: bool, batch_size: int) -> list[list[str]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from tqdm.auto import tqdm

        texts: list[list[str]] = []
        starts = range(0, len(encoded), batch_size)
        for chunk_index, start in enumerate(tqdm(starts, disable=not progress, desc="generate")):
            chunk = encoded[start:start + batch_size]
            rollout = self.generate(chunk, sp, jax.random.fold_in(key, chunk_index))
            texts.extend(rollout.texts[i * sp.n:(i + 1) * sp.n] for i in range(len(chunk)))
        return texts
