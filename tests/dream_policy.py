"""A linear policy trained only inside DreamEnv, loaded by experiments/evaluate.py --policy tests.dream_policy:load_policy.

Its weights are read from the .npy file named by REVERIE_TEST_POLICY (no pickles)."""

import os

import numpy as np


def load_policy(observation_space, action_space):
    weights = np.load(os.environ["REVERIE_TEST_POLICY"], allow_pickle=False)
    if weights.shape != (observation_space.shape[0], action_space.shape[0]):
        raise ValueError(f"policy weights {weights.shape} do not fit observations {observation_space.shape} -> actions {action_space.shape}")
    return lambda obs: np.tanh(obs @ weights)
