"""Dreamer: actor-critic learning in the imagination of an SSM world model."""

from agents.dreamer.agent import Dreamer, DreamerState, Part
from agents.dreamer.config import DreamerConfig

__all__ = ["Dreamer", "DreamerConfig", "DreamerState", "Part"]
