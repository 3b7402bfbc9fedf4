"""DeepMind Control tasks in MuJoCo XLA (MJX): pure JAX functions, vmapped over many environments.

`mjx/<domain>-<task>` is the JAX form of `dmc/<domain>-<task>`: the same MJCF
model (dm-control's own file), the same control timestep, action repeat and
time limit, the same initial-state distribution, and the same observation
layout and reward (`tests/test_mjx.py` compares both on the same states).
Observations are proprioceptive only (the `proprio` vector of the dmc task).

    env = MJXEnv("mjx/cartpole-swingup")
    state = jax.vmap(env.reset)(keys)                     # (N,) environments
    state, reward = jax.vmap(env.step)(state, actions)    # one agent step each
    obs = jax.vmap(env.observe)(state)

dm-control advances physics as `mj_step2; mj_step1` (positions and velocities
of the new state are current when the reward is computed); here each substep
integrates and then runs `mjx.forward`, which gives the same states and
observations. None of these tasks terminates: every episode lasts
`time_limit` agent steps, which lets the compiled loop reset all its
environments together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from envs import dmc

with contextlib.redirect_stdout(io.StringIO()):  # mjx prints a notice when the optional `warp` backend is absent
    from mujoco import mjx

# `domain-task` -> (dm-control domain, task); the tasks with a JAX form.
TASKS = {
    "cartpole-balance": ("cartpole", "balance"),
    "cartpole-swingup": ("cartpole", "swingup"),
    "pendulum-swingup": ("pendulum", "swingup"),
    "reacher-easy": ("reacher", "easy"),
    "cheetah-run": ("cheetah", "run"),
    "walker-walk": ("walker", "walk"),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class State:
    data: mjx.Data
    target: jax.Array
    """Task-specific episode constants (the reacher's target position (2,); zeros elsewhere)."""
    t: jax.Array
    """Agent steps taken in this episode."""


def tolerance(x, bounds=(0.0, 0.0), margin=0.0, sigmoid="gaussian", value_at_margin=0.1):
    """dm_control.utils.rewards.tolerance in JAX (the sigmoids these tasks use)."""
    lower, upper = bounds
    in_bounds = (lower <= x) & (x <= upper)
    if margin == 0:
        return jnp.where(in_bounds, 1.0, 0.0)
    d = jnp.where(x < lower, lower - x, x - upper) / margin
    if sigmoid == "gaussian":
        value = jnp.exp(-0.5 * (d * np.sqrt(-2 * np.log(value_at_margin))) ** 2)
    elif sigmoid == "linear":
        scaled = d * (1 - value_at_margin)
        value = jnp.where(jnp.abs(scaled) < 1, 1 - scaled, 0.0)
    elif sigmoid == "quadratic":
        scaled = d * np.sqrt(1 - value_at_margin)
        value = jnp.where(jnp.abs(scaled) < 1, 1 - scaled**2, 0.0)
    else:
        raise ValueError(f"sigmoid {sigmoid!r} is not implemented; allowed: gaussian, linear, quadratic.")
    return jnp.where(in_bounds, 1.0, value)


def _zz(d, body):
    return d.xmat[body, 2, 2]


def _xz(d, body):
    return d.xmat[body, 0, 2]


# Per domain: observe(d, target) -> (obs,), reward(d, target) -> (), and initial positions.

def _cartpole_observe(d, target):
    return jnp.concatenate([d.qpos[:1], d.xmat[2:, 2, 2], d.xmat[2:, 0, 2], d.qvel])


def _cartpole_reward(d, target):
    upright = (_zz(d, 2) + 1) / 2
    centered = (1 + tolerance(d.qpos[0], margin=2)) / 2
    small_control = (4 + tolerance(d.ctrl[0], margin=1, value_at_margin=0, sigmoid="quadratic")) / 5
    small_velocity = (1 + tolerance(d.qvel[1], margin=5)) / 2
    return upright * small_control * small_velocity * centered


def _pendulum_observe(d, target):
    return jnp.stack([_zz(d, 1), _xz(d, 1), d.qvel[0]])


def _pendulum_reward(d, target):
    return tolerance(_zz(d, 1), (np.cos(np.deg2rad(8)), 1))


def _reacher(model) -> tuple[Callable, Callable]:
    finger = model.geom("finger").id
    radii = 0.05 + float(model.geom_size[finger, 0])  # reacher-easy's target size plus the finger's

    def observe(d, target):
        return jnp.concatenate([d.qpos, target - d.geom_xpos[finger, :2], d.qvel])

    def reward(d, target):
        return tolerance(jnp.linalg.norm(target - d.geom_xpos[finger, :2]), (0, radii))

    return observe, reward


def _cheetah_observe(d, target):
    return jnp.concatenate([d.qpos[1:], d.qvel])


def _cheetah_reward(d, target):
    return tolerance(d.sensordata[0], (10.0, float("inf")), margin=10.0, value_at_margin=0, sigmoid="linear")


def _walker_observe(d, target):
    orientations = jnp.stack([d.xmat[1:, 0, 0], d.xmat[1:, 0, 2]], -1).ravel()
    return jnp.concatenate([orientations, d.xpos[1, 2:3], d.qvel])


def _walker_reward(d, target):
    standing = tolerance(d.xpos[1, 2], (1.2, float("inf")), margin=0.6)
    upright = (1 + _zz(d, 1)) / 2
    stand = (3 * standing + upright) / 4
    move = tolerance(d.sensordata[0], (1.0, float("inf")), margin=0.5, value_at_margin=0.5, sigmoid="linear")
    return stand * (5 * move + 1) / 6


@dataclasses.dataclass(frozen=True)
class _Domain:
    observe: Callable
    reward: Callable
    init: str
    """'cartpole-swingup', 'cartpole-balance', 'random-joints' (dm-control's randomizer), 'random-joints-settle' (cheetah)."""


def _domain(task: str, model) -> _Domain:
    if task == "reacher-easy":
        return _Domain(*_reacher(model), "random-joints")
    return {
        "cartpole-balance": _Domain(_cartpole_observe, _cartpole_reward, "cartpole-balance"),
        "cartpole-swingup": _Domain(_cartpole_observe, _cartpole_reward, "cartpole-swingup"),
        "pendulum-swingup": _Domain(_pendulum_observe, _pendulum_reward, "random-joints"),
        "cheetah-run": _Domain(_cheetah_observe, _cheetah_reward, "random-joints-settle"),
        "walker-walk": _Domain(_walker_observe, _walker_reward, "random-joints"),
    }[task]


def names() -> list[str]:
    return [f"mjx/{task}" for task in TASKS]


def check_task(name: str) -> str:
    """`mjx/<task>` -> `<task>`, or a ValueError listing the tasks that have an MJX form."""
    suite, _, task = name.partition("/")
    if suite != "mjx" or task not in TASKS:
        hint = ""
        if task in TASKS:
            hint = f" {task} has an MJX form: use mjx/{task}."
        raise ValueError(f"Task {name!r} has no MJX form.{hint} MJX tasks: {', '.join(names())}.")
    return task


class MJXEnv:
    """One `mjx/<domain>-<task>` environment as pure functions of a `State`; vmap them for many."""

    def __init__(self, name: str, *, action_repeat: int = dmc.ACTION_REPEAT, time_limit: int | None = None,
                 velocities: bool = True):
        from dm_control import suite

        self.name, self.task = name, check_task(name)
        domain, task = TASKS[self.task]
        env = suite.load(domain, task)
        model = env.physics.model._model  # the compiled MjModel, dm-control's settings included
        model.opt.enableflags = 0  # the energy flag is diagnostic only, and MJX does not support it
        self.host_model = model
        integrators = {0: mjx.euler, 1: mjx.rungekutta4, 3: mjx.implicit}
        if int(model.opt.integrator) not in integrators:
            raise ValueError(f"{name}: integrator {model.opt.integrator} has no MJX form; allowed: Euler, RK4, implicitfast.")
        self._integrate = integrators[int(model.opt.integrator)]
        self.model = mjx.put_model(model)
        self._domain = _domain(self.task, model)
        self.action_repeat = action_repeat
        self.substeps = round(env.control_timestep() / model.opt.timestep)
        self.time_limit = time_limit if time_limit is not None else dmc.default_time_limit(action_repeat)
        self.action_size = int(model.nu)
        self.low, self.high = (np.asarray(x, np.float32) for x in model.actuator_ctrlrange.T)
        # dm-control's randomize_limited_and_rotational_joints, for models of hinges and slides.
        limited = model.jnt_limited.astype(bool)
        hinge = model.jnt_type == 3
        if not np.all(np.isin(model.jnt_type, (2, 3))):
            raise ValueError(f"{name}: only hinge and slide joints are supported by the randomiser.")
        self._random = limited | hinge
        self._low = np.where(limited, model.jnt_range[:, 0], -np.pi).astype(np.float32)
        self._high = np.where(limited, model.jnt_range[:, 1], np.pi).astype(np.float32)
        if not velocities:
            dmc.without_velocities(self.task, list(env.observation_spec()))  # refuses a task without velocities
        # Every task's observation ends with qvel, as its dmc form's ends with its `velocity` key.
        self._drop = 0 if velocities else int(model.nv)
        self.observation_size = int(jax.eval_shape(self.observe, jax.eval_shape(self.reset, jax.random.key(0))).shape[0])

    # The environment.

    def reset(self, key: jax.Array) -> State:
        m = self.model
        d = mjx.make_data(m)
        qpos, qvel = jnp.asarray(self.host_model.qpos0, jnp.float32), jnp.zeros(m.nv)
        k1, k2, k3 = jax.random.split(key, 3)
        target = jnp.zeros(2)
        init = self._domain.init
        if init == "cartpole-swingup":
            qpos = jnp.array([0.0, jnp.pi]) + 0.01 * jax.random.normal(k1, (2,))
            qvel = 0.01 * jax.random.normal(k2, (m.nv,))
        elif init == "cartpole-balance":
            qpos = jnp.concatenate([jax.random.uniform(k1, (1,), minval=-0.1, maxval=0.1),
                                    jax.random.uniform(k3, (m.nq - 1,), minval=-0.034, maxval=0.034)])
            qvel = 0.01 * jax.random.normal(k2, (m.nv,))
        else:
            sample = jax.random.uniform(k1, (m.nq,), minval=self._low, maxval=self._high)
            qpos = jnp.where(self._random, sample, qpos)
            if self.task == "reacher-easy":
                angle = jax.random.uniform(k2, (), minval=0, maxval=2 * jnp.pi)
                radius = jax.random.uniform(k3, (), minval=0.05, maxval=0.2)
                target = jnp.stack([radius * jnp.sin(angle), radius * jnp.cos(angle)])
        d = mjx.forward(m, d.replace(qpos=qpos, qvel=qvel))
        if init == "random-joints-settle":  # cheetah: 200 physics steps with no control, then time 0
            d = jax.lax.fori_loop(0, 200, lambda _, d: self._physics_step(d), d)
            d = d.replace(time=jnp.zeros_like(d.time))
        return State(d, target, jnp.zeros((), jnp.int32))

    def step(self, state: State, action: jax.Array) -> tuple[State, jax.Array]:
        """One agent step: `action` (A,) in [-1, 1] held for `action_repeat` control steps; the summed reward."""
        ctrl = self.low + (jnp.clip(action, -1, 1) + 1) / 2 * (self.high - self.low)

        def control_step(d, _):
            d = d.replace(ctrl=ctrl)
            d = jax.lax.fori_loop(0, self.substeps, lambda _, d: self._physics_step(d), d)
            return d, self._domain.reward(d, state.target)

        d, rewards = jax.lax.scan(control_step, state.data, None, length=self.action_repeat)
        return State(d, state.target, state.t + 1), rewards.sum()

    def observe(self, state: State) -> jax.Array:
        obs = self._domain.observe(state.data, state.target).astype(jnp.float32)
        return obs[:obs.shape[0] - self._drop]

    def reward(self, state: State) -> jax.Array:
        """The reward of the current physics state (what dm-control returns after a control step)."""
        return self._domain.reward(state.data, state.target)

    def _physics_step(self, d: mjx.Data) -> mjx.Data:
        """One physics step in dm-control's order, `mj_step2` then `mj_step1`: forces and
        accelerations under the current control, integrate, then positions and velocities
        (and their sensors) of the new state, so that observations and rewards see it."""
        m = self.model
        d = mjx.fwd_actuation(m, d)
        d = mjx.fwd_acceleration(m, d)
        if d._impl.efc_J.size == 0:  # no constraints (as in mjx.forward)
            d = d.replace(qacc=d.qacc_smooth)
        else:
            d = mjx.solve(m, d)
        d = self._integrate(m, d)
        d = mjx.fwd_position(m, d)
        d = mjx.sensor_pos(m, d)
        d = mjx.fwd_velocity(m, d)
        return mjx.sensor_vel(m, d)
