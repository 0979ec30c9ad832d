"""Runs: train, evaluate and export, with the method resolved by name (`jaxalign.methods.build_method`)
and handed to the loop, which imports no method. The CLI and notebooks call these."""

from __future__ import annotations

import json
import pathlib

import ml_collections

from jaxalign.config import ConfigError, ExperimentConfig, from_config_dict


def train(config: ExperimentConfig, workdir: str | pathlib.Path):
    """Trains (or resumes) the run in `workdir`; returns the loop's `RunResult`."""
    from jaxalign.methods.base import build_method
    from jaxalign.train.loop import train as train_loop

    return train_loop(config, workdir, build_method(config))


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


def restored_agents(config: ExperimentConfig, workdir: str | pathlib.Path | None):
    """Every agent of `config`, with the latest checkpoint of `workdir` loaded (as built without one)."""
    from jaxalign.sharding import make_mesh
    from jaxalign.train.agents import build_agents, load_state_tree, state_tree
    from jaxalign.train.checkpoint import Checkpointer, abstract_like

    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    agents = build_agents(config, mesh)
    if workdir is not None:
        ckpt = Checkpointer(workdir, keep=config.checkpoint.keep, async_save=False)
        restored = ckpt.restore_latest(abstract_like(state_tree(agents)))
        ckpt.close()
        if restored is None:
            raise ConfigError(f"{workdir} has no readable checkpoint")
        load_state_tree(agents, restored[1])  # also refreshes the samplers with the policies' weights
    return agents


def evaluate_checkpoint(config: ExperimentConfig, workdir: str | pathlib.Path | None) -> dict[str, float]:
    """The method's eval episode (every agent acting, greedy) on a run's latest checkpoint, or on the
    config's models when there is no workdir. Uses the stage of the last training step."""
    from jaxalign.methods.base import build_method
    from jaxalign.rewards.pool import RewardPool
    from jaxalign.train import batching
    from jaxalign.train.loop import evaluate

    method = build_method(config)
    agents = restored_agents(config, workdir)
    method.apply_stage(config.stage_at(config.train.steps)[1].overrides)
    method.setup(agents)
    _, eval_examples = method.load_data()
    with RewardPool(config.rewards.num_workers, config.rewards.timeout_s) as pool:
        return evaluate(config, method, agents, pool, eval_examples, batching.PromptCounters())


def export_checkpoint(workdir: str | pathlib.Path, out_dir: str | pathlib.Path, agent: str | None = None) -> str:
    """Writes one agent's policy of the latest checkpoint of `workdir` as an HF model directory; returns
    the agent's name. `agent` may be omitted when the run has one."""
    from flax import nnx

    from jaxalign.models import export_hf

    config = run_config(workdir)
    if agent is None:
        if len(config.agents) != 1:
            raise ConfigError(f"{workdir} has {len(config.agents)} agents ({', '.join(config.agents)}); "
                              "choose one with --agent NAME")
        agent = next(iter(config.agents))
    if agent not in config.agents:
        raise ConfigError(f"--agent {agent!r} is not an agent of {workdir}; its agents: {', '.join(config.agents)}")
    chosen = restored_agents(config, workdir)[agent]
    # `policy_params` is the policy alone, also when a shared value head lives in the same train state.
    export_hf(nnx.merge(chosen.graphdef, chosen.policy_params), chosen.tokenizer, str(out_dir))
    return agent
