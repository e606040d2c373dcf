"""The Gymnasium face: registration, check_env, vector envs, and agreement with sample_batch."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import colenv

IDS = ["colenv/Bifurcation-v0", "colenv/Decision-v0", "colenv/XOR-v0", "colenv/Parity-v0"]
# check_env resets a dozen times; shorter trials keep it cheap without changing the code path.
SHORT = {
    "colenv/Bifurcation-v0": {"trial_ms": 2000.0},
    "colenv/Decision-v0": {"pre_stimulus_ms": 50.0, "stimulus_ms": 200.0, "post_stimulus_ms": 50.0},
    "colenv/XOR-v0": {},
    "colenv/Parity-v0": {},
}


def test_ids_registered_and_listed():
    for env_id in IDS:
        assert env_id in gym.registry
    listed = colenv.list_tasks()
    assert [t["id"] for t in listed] == IDS
    assert all(t["paper"] and t["tags"] for t in listed)


def test_module_prefixed_make_and_kwargs_pass_through():
    env = gym.make("colenv:colenv/Parity-v0", n_bits=3)
    assert env.unwrapped.n_bits == 3 and env.observation_space.shape == (3,)
    with pytest.raises(TypeError, match="n_bit"):
        gym.make("colenv/Parity-v0", n_bit=3)
    with pytest.raises(ValueError, match="2..8"):
        gym.make("colenv/Parity-v0", n_bits=9)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes_without_warnings(env_id):
    env = gym.make(env_id, **SHORT[env_id])
    check_env(env.unwrapped)


@pytest.mark.parametrize("env_id", IDS)
def test_rollout_through_step_sees_the_sample_batch_trial(env_id):
    env = gym.make(env_id)
    task = env.unwrapped
    trial = task.sample_batch(1, seed=11)
    obs, info = env.reset(seed=11)
    stimuli, targets, masks, rewards = [obs], [], [], []
    scale = task.action_scale
    terminated = False
    while not terminated:
        k = len(targets)
        action = (trial.target[k, 0].numpy() / scale).astype(np.float32)
        obs, reward, terminated, truncated, step_info = env.step(action)
        assert not truncated
        targets.append(step_info["target"])
        masks.append(step_info["mask"])
        rewards.append(reward)
        if not terminated:
            stimuli.append(obs)
    assert len(targets) == trial.n_steps
    np.testing.assert_array_equal(np.stack(stimuli), trial.stimulus[:, 0].numpy())
    np.testing.assert_array_equal(np.stack(targets), trial.target[:, 0].numpy())
    np.testing.assert_array_equal(np.stack(masks), trial.mask[:, 0].numpy())
    assert max(abs(r) for r in rewards) < 1e-8  # the target as action costs nothing
    for key, value in trial.conditions.items():
        np.testing.assert_array_equal(info["conditions"][key], value[0].numpy())


def test_reset_without_seed_draws_from_np_random():
    env = gym.make("colenv/XOR-v0")
    env.reset(seed=5)
    _, first = env.reset()
    env.reset(seed=5)
    _, again = env.reset()
    assert first["trial_seed"] == again["trial_seed"]
    trial = env.unwrapped.sample_batch(1, seed=first["trial_seed"])
    np.testing.assert_array_equal(first["conditions"]["bits"], trial.conditions["bits"][0].numpy())


def test_reset_options_choose_conditions():
    env = gym.make("colenv/XOR-v0")
    _, info = env.reset(seed=0, options={"conditions": {"bits": [[1, 0]]}})
    assert info["conditions"]["bits"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"bits": [1, 0]})


def test_reward_is_minus_masked_squared_error():
    env = gym.make("colenv/XOR-v0", pre_stimulus_ms=10, stimulus_ms=10, response_ms=5)
    env.reset(seed=0, options={"conditions": {"bits": [[0, 1]]}})
    rewards = [env.step(np.array([0.1], dtype=np.float32))[1] for _ in range(20)]
    # unmasked steps cost nothing; masked ones (5 ms) score 5 Hz against 20 Hz
    assert rewards[:15] == [0.0] * 15
    assert np.allclose(rewards[15:], -((0.1 * 50.0 - 20.0) ** 2), rtol=1e-6)


def test_step_rejects_bad_actions_and_stepping_past_the_end():
    env = gym.make("colenv/XOR-v0", pre_stimulus_ms=2, stimulus_ms=2, response_ms=1).unwrapped
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, dtype=np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        env.step(np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan], dtype=np.float32))
    for _ in range(3):
        assert not env.step(np.zeros(1, dtype=np.float32))[2]
    obs, _, terminated, _, _ = env.step(np.zeros(1, dtype=np.float32))
    assert terminated and obs in env.observation_space
    with pytest.raises(RuntimeError, match="ended"):
        env.step(np.zeros(1, dtype=np.float32))


def test_make_vec_sync():
    envs = gym.make_vec("colenv/XOR-v0", num_envs=4, vectorization_mode="sync")
    obs, info = envs.reset(seed=0)
    assert obs.shape == (4, 2) and obs.dtype == np.float32
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert reward.shape == (4,) and info["target"].shape == (4, 1)
    envs.close()


def test_render_mode_rejected():
    with pytest.raises(ValueError, match="render_mode"):
        colenv.XOR(render_mode="human")


def test_observation_and_action_spaces():
    for env_id in IDS:
        env = gym.make(env_id).unwrapped
        assert env.observation_space.shape == (env.n_inputs,)
        assert env.action_space.shape == (env.n_outputs,)
        assert env.observation_space.dtype == env.action_space.dtype == np.float32
        trial = env.sample_batch(2, seed=0)
        assert trial.stimulus.shape[2] == env.n_inputs and trial.target.shape[2] == env.n_outputs
        assert torch.all(trial.stimulus >= float(env.observation_space.low[0]))
        assert torch.all(trial.stimulus <= float(env.observation_space.high[0]))
