"""Episodes on disk and sequences sampled from them."""

from embodied.replay.replay import Replay, ReplayConfig
from embodied.replay.store import REQUIRED_KEYS, Episode, EpisodeStore, check_episode

__all__ = ["REQUIRED_KEYS", "Episode", "EpisodeStore", "Replay", "ReplayConfig", "check_episode"]
