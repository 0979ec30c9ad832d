"""Value models for PPO's learned critic: a separate value model, or a value head on the policy's trunk.

Both reuse `Transformer` for the backbone and add a scalar head `[embed] -> 1` on its final-normed hidden
states. The head's parameters carry logical axis names (`("embed",)` for the kernel, `()` for the bias),
so `jaxalign.sharding.param_shardings` shards them like the rest of the model.

Value layout (one convention with the log-probs of `jaxalign.algorithms.logprobs`): `values_bt[:, c]` is
the value of the state *before* token c is generated, i.e. the head applied to the hidden state at column
c - 1, which is the state the log-prob `logp_bt[:, c]` conditions on. It is 0 at c = 0 and wherever token c
or its predecessor is padding. So the critic's value of response token j sits at column P + j, exactly
where `place_response` puts that token's advantage and return, and GAE's `delta_t = r_t + gamma V_{t+1} -
V_t` is taken over the same columns.

* `ValueModel(cfg, rngs=...)`: a separate critic (backbone + head). The backbone's untied `lm_head` is
  dropped (a critic never unembeds), so a critic has the policy's parameters minus the LM head plus the
  value head. `value_model_from_policy(policy)` initialises the backbone from a policy's weights (copies,
  never shared buffers, because train steps donate their state).
* `ActorCritic(cfg, rngs=...)`: the policy `Transformer` (attribute `policy`) plus a value head (attribute
  `value_head`) reading the same trunk. One forward pass gives both the hidden states for the log-probs
  and the values. Gradient flow in the combined objective `policy_loss + value_coef * value_loss` (see
  `jaxalign.train.critic.make_actor_critic_train_step`): the value head is trained by the value loss only,
  an untied `lm_head` by the policy loss only, and the shared trunk (embedding, decoder layers, final norm)
  by both, the value loss scaled by `value_coef`. `value_coef` therefore sets how much the critic's
  regression reshapes the policy's features; global-norm gradient clipping applies to the sum. The sampler
  takes the policy part, `params["policy"]` of `nnx.split(actor_critic)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import (
    LOGICAL_AXES_KEY,
    Transformer,
    causal_attention_mask,
    positions_from_mask,
)


class ValueHead(nnx.Module):
    """Scalar head: `values_bt = hidden_btd . kernel_d + bias`, computed in float32.

    The kernel starts normal with standard deviation `init_std / sqrt(hidden_size)`, so on unit-RMS hidden
    states the initial values have a spread of about `init_std`. The default 0 makes every initial value
    equal the bias (0): GAE then starts as plain reward-to-go, and the first update moves only the head
    (the trunk's gradient through a zero kernel is zero).
    """

    def __init__(self, hidden_size: int, *, param_dtype=jnp.float32, init_std: float = 0.0,
                 rngs: nnx.Rngs):
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        pdt = jnp.dtype(param_dtype)
        scale = init_std / float(hidden_size) ** 0.5
        kernel_d = scale * jax.random.normal(rngs.params(), (hidden_size,), jnp.float32)
        self.kernel = nnx.Param(kernel_d.astype(pdt), eager_sharding=False, **{LOGICAL_AXES_KEY: ("embed",)})
        self.bias = nnx.Param(jnp.zeros((), pdt), eager_sharding=False, **{LOGICAL_AXES_KEY: ()})

    def __call__(self, hidden_btd: jax.Array) -> jax.Array:
        """float32 [b, t]: the head at every column (not yet shifted to the value layout)."""
        kernel_d = self.kernel[...].astype(jnp.float32)
        return jnp.einsum("btd,d->bt", hidden_btd.astype(jnp.float32), kernel_d) + self.bias[...].astype(
            jnp.float32
        )


def shift_to_value_layout(head_bt: jax.Array, valid_bt: jax.Array) -> jax.Array:
    """From head outputs per column to the value layout (module doc): `values[:, c] = head[:, c - 1]`, 0 at
    c = 0 and where token c or token c - 1 is not valid. `where`, not a product, so padding never leaks."""
    valid_bt = valid_bt.astype(bool)
    pair_valid_bt = valid_bt[:, 1:] & valid_bt[:, :-1]
    first_b1 = jnp.zeros((head_bt.shape[0], 1), jnp.float32)
    return jnp.concatenate([first_b1, jnp.where(pair_valid_bt, head_bt[:, :-1], 0.0)], axis=1)


def _trunk_inputs(tokens_bt, valid_bt, positions_bt):
    if positions_bt is None:
        positions_bt = positions_from_mask(valid_bt)
    return positions_bt, causal_attention_mask(valid_bt)


class ValueModel(nnx.Module):
    """A separate critic: `Transformer` backbone (no LM head) + `ValueHead`.

    `model.token_values(tokens_bt, valid_bt, positions_bt=None) -> values_bt` float32 in the value layout.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, head_init_std: float = 0.0):
        self.cfg = cfg
        self.backbone = Transformer(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            del self.backbone.lm_head  # a critic never unembeds
        self.head = ValueHead(cfg.hidden_size, param_dtype=cfg.param_dtype, init_std=head_init_std, rngs=rngs)

    def token_values(self, tokens_bt: jax.Array, valid_bt: jax.Array,
                     positions_bt: jax.Array | None = None) -> jax.Array:
        """Values [b, t] in the value layout (module doc)."""
        positions_bt, mask_btt = _trunk_inputs(tokens_bt, valid_bt, positions_bt)
        hidden_btd, _ = self.backbone(tokens_bt, positions_bt, mask_btt)
        return shift_to_value_layout(self.head(hidden_btd), valid_bt)


class ActorCritic(nnx.Module):
    """The policy `Transformer` (`policy`) with a `ValueHead` (`value_head`) on its trunk (module doc)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, head_init_std: float = 0.0):
        self.cfg = cfg
        self.policy = Transformer(cfg, rngs=rngs)
        self.value_head = ValueHead(cfg.hidden_size, param_dtype=cfg.param_dtype, init_std=head_init_std,
                                    rngs=rngs)

    def hidden_and_values(self, tokens_bt: jax.Array, valid_bt: jax.Array,
                          positions_bt: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """One trunk pass: `(hidden_btd, values_bt)`, the hidden states for the log-probs (unembed with
        `self.policy.unembed_matrix()`) and the values in the value layout."""
        positions_bt, mask_btt = _trunk_inputs(tokens_bt, valid_bt, positions_bt)
        hidden_btd, _ = self.policy(tokens_bt, positions_bt, mask_btt)
        return hidden_btd, shift_to_value_layout(self.value_head(hidden_btd), valid_bt)

    def token_values(self, tokens_bt: jax.Array, valid_bt: jax.Array,
                     positions_bt: jax.Array | None = None) -> jax.Array:
        """Values [b, t] in the value layout (module doc)."""
        return self.hidden_and_values(tokens_bt, valid_bt, positions_bt)[1]


def _copy_tree(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def _from_policy(cls, backbone_name: str, head_name: str, policy: Transformer, *, head_init_std: float,
                 seed: int, mesh, role: str):
    """Builds `cls(policy.cfg)` abstractly, fills `backbone_name` with copies of the policy's parameters
    and creates only the head concretely (sharded per `role` on `mesh` when given)."""
    cfg = policy.cfg
    abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(seed), head_init_std=head_init_std))
    graphdef, state = nnx.split(abstract)
    policy_state = nnx.state(policy)
    wanted, have = set(state[backbone_name].keys()), set(policy_state.keys())
    if not wanted <= have or have - wanted - {"lm_head"}:
        raise ValueError(f"the policy's parameters {sorted(have)} do not fit a backbone with {sorted(wanted)}; "
                         "use a policy of the same ModelConfig")

    def make_head():
        return nnx.state(ValueHead(cfg.hidden_size, param_dtype=cfg.param_dtype, init_std=head_init_std,
                                   rngs=nnx.Rngs(seed)))

    if mesh is None:
        head = make_head()
    else:
        from jaxalign.sharding import param_shardings

        head = jax.jit(make_head, out_shardings=param_shardings(nnx.eval_shape(make_head), mesh, role))()
    state[backbone_name] = _copy_tree(nnx.State({key: policy_state[key] for key in wanted}))
    state[head_name] = head
    return nnx.merge(graphdef, state)


def value_model_from_policy(policy: Transformer, *, head_init_std: float = 0.0, seed: int = 0,
                            mesh=None, role: str = "train") -> ValueModel:
    """A `ValueModel` whose backbone is a copy of `policy`'s weights (shardings kept) and whose head is
    fresh (`ValueHead` init; sharded per `role` on `mesh` when given). Nothing is initialised randomly
    for the backbone, so this is cheap for large models."""
    return _from_policy(ValueModel, "backbone", "head", policy, head_init_std=head_init_std, seed=seed,
                        mesh=mesh, role=role)


def actor_critic_from_policy(policy: Transformer, *, head_init_std: float = 0.0, seed: int = 0,
                             mesh=None, role: str = "train") -> ActorCritic:
    """An `ActorCritic` whose policy is a copy of `policy`'s weights and whose value head is fresh."""
    return _from_policy(ActorCritic, "policy", "value_head", policy, head_init_std=head_init_std, seed=seed,
                        mesh=mesh, role=role)
