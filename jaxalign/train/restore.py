"""Using a finished (or running) run's latest checkpoint: greedy eval and export as an HF model."""

from __future__ import annotations

import json
import pathlib

import ml_collections

from jaxalign.config import ConfigError, ExperimentConfig, from_config_dict


def run_config_dict(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config a run saved in `<workdir>/config.json`, as a locked ConfigDict."""
    from jaxalign.train.checkpoint import workdir_path

    path = workdir_path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: {workdir} is not a jaxalign run directory")
    cd = ml_collections.ConfigDict(json.loads(path.read_text()))
    cd.lock()
    return cd


def run_config(workdir: str | pathlib.Path) -> ExperimentConfig:
    """The resolved, validated config a run saved in `<workdir>/config.json`."""
    return from_config_dict(run_config_dict(workdir))


def _restored_agent(config: ExperimentConfig, workdir: str | pathlib.Path | None):
    from jaxalign.sharding import make_mesh
    from jaxalign.train.agents import build_agent, load_state_tree, state_tree
    from jaxalign.train.checkpoint import Checkpointer, abstract_like

    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    agent, tokenizer, _ = build_agent(config, mesh)
    if workdir is not None:
        ckpt = Checkpointer(workdir, keep=config.checkpoint.keep, async_save=False)
        restored = ckpt.restore_latest(abstract_like(state_tree([agent])))
        ckpt.close()
        if restored is None:
            raise ConfigError(f"{workdir} has no readable checkpoint")
        load_state_tree([agent], restored[1])  # also refreshes the sampler with the policy's weights
    return agent, tokenizer


def evaluate_checkpoint(config: ExperimentConfig, workdir: str | pathlib.Path | None) -> dict[str, float]:
    """Greedy eval (the method's metrics) of a run's latest checkpoint, or of `config.model` if no workdir."""
    from jaxalign import methods as _methods  # noqa: F401
    from jaxalign.methods.base import get_method
    from jaxalign.rewards.pool import RewardPool
    from jaxalign.train import batching
    from jaxalign.train.loop import _encoder, evaluate

    method = get_method(config.method)(config.method_config)
    _, eval_examples = method.load_data()
    agent, tokenizer = _restored_agent(config, workdir)
    with RewardPool(config.rewards.num_workers, config.rewards.timeout_s) as pool:
        return evaluate(config, method, agent, tokenizer, pool, eval_examples, _encoder(method, tokenizer),
                        batching.PromptCounters())


def export_checkpoint(workdir: str | pathlib.Path, out_dir: str | pathlib.Path) -> None:
    """Writes the policy of the latest checkpoint of `workdir` as an HF model directory."""
    from flax import nnx

    from jaxalign.models import export_hf

    config = run_config(workdir)
    agent, tokenizer = _restored_agent(config, workdir)
    # `policy_params` is the policy alone, also when a shared value head lives in the same train state.
    export_hf(nnx.merge(agent.graphdef, agent.policy_params), tokenizer, str(out_dir))
