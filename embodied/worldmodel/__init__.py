"""The latent video predictor, its temporal backbones, imagination and train step."""

from embodied.worldmodel.backbones import BACKBONES, BackboneConfig, make_backbone
from embodied.worldmodel.imagine import Trajectory, imagine
from embodied.worldmodel.model import ImagineState, Spec, WorldModel, WorldModelConfig
from embodied.worldmodel.train import OptimConfig, TrainState, init_state, make_optimizer, make_train_step, model_of

__all__ = ["BACKBONES", "BackboneConfig", "ImagineState", "OptimConfig", "Spec", "Trajectory", "TrainState", "WorldModel",
           "WorldModelConfig", "imagine", "init_state", "make_backbone", "make_optimizer", "make_train_step", "model_of"]
