"""Reverie's core: layers, world model, replay, parallelism, checkpoints, logging.

Nothing here knows a task or an agent: `envs`, `agents` and `experiments`
import from `embodied`, never the other way.
"""
