"""The gym_cards environments as pixel environments for a CNN policy (RL4VLM's CNN+RL baseline).

:class:`PixelCardsEnv` wraps the project's own environment (``rollout.envs.make_env``) and changes
ONE thing: the observation. The env draws its usual picture at ``render_size`` (RL4VLM: 300x300),
which is resized with Pillow's bilinear filter to ``obs_size`` x ``obs_size`` and scaled to float32
in [0, 1]: an (obs_size, obs_size, 3) array; with ``subtract_background`` each pixel is instead its
absolute distance from the env's background colour (|rgb - background| / 255), so the plain
background is 0 and only the drawing (text, cards) excites the CNN. Actions (indices into the env's ``ACTIONS``), rewards,
``terminated``/``truncated`` (the env's own step cap) and ``info`` (including ``success`` = the
episode ended with a return > 0) pass through unchanged.

It is a plain ``gymnasium.Env`` whose constructor takes one mapping (RLlib hands an ``EnvContext``,
a dict), so RLlib uses the class as it is; this module imports no Ray.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageColor

from rollout.envs import CardsEnv, make_env

DEFAULTS: dict[str, Any] = {"env": "numberline", "obs_size": 84, "render_size": 300, "max_steps": None,
                            "subtract_background": False}


def resize_observation(image: np.ndarray, obs_size: int, background: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> (obs_size, obs_size, 3) float32 in [0, 1] (Pillow bilinear resize);
    with ``background`` (an RGB triple) the absolute difference from it instead."""
    small = np.asarray(Image.fromarray(image).resize((obs_size, obs_size), Image.BILINEAR), dtype=np.float32)
    if background is not None:
        small = np.abs(small - background.astype(np.float32))
    return small / 255.0


def background_rgb(env: CardsEnv) -> np.ndarray:
    """The env's background colour (its ``BACKGROUND``) as a (3,) uint8 array."""
    return np.array(ImageColor.getrgb(env.BACKGROUND), dtype=np.uint8)


class PixelCardsEnv(gym.Env):
    """One gym_cards environment with resized float observations (see the module docstring).

    ``config`` keys: ``env`` (a ``rollout.envs.ENVS`` name), ``obs_size`` (CNN input side, pixels),
    ``render_size`` (side the env draws at before the resize), ``max_steps`` (None: the env's own
    step cap), ``subtract_background`` (see the module docstring). ``reset(seed=s)`` resets the inner env with the same seed, so seed s starts the same
    state as the VLM recipes' env seed s.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = {**DEFAULTS, **dict(config or {})}
        unknown = set(cfg) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"PixelCardsEnv: unknown config keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        kwargs: dict[str, Any] = {"image_size": int(cfg["render_size"])}
        if cfg["max_steps"] is not None:
            kwargs["max_steps"] = int(cfg["max_steps"])
        self.inner: CardsEnv = make_env(cfg["env"], **kwargs)
        self.obs_size = int(cfg["obs_size"])
        self.background = background_rgb(self.inner) if cfg["subtract_background"] else None
        self.action_space = spaces.Discrete(len(self.inner.ACTIONS))
        self.observation_space = spaces.Box(0.0, 1.0, (self.obs_size, self.obs_size, 3), np.float32)
        self.render_mode = "rgb_array"

    @property
    def actions(self) -> tuple[str, ...]:
        """The inner env's action strings; action index i plays ``actions[i]``."""
        return self.inner.ACTIONS

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        image, info = self.inner.reset(seed=seed, options=options)
        return resize_observation(image, self.obs_size, self.background), info

    def step(self, action):
        image, reward, terminated, truncated, info = self.inner.step(action)
        return resize_observation(image, self.obs_size, self.background), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """The inner env's full-size picture, (render_size, render_size, 3) uint8."""
        return self.inner.render()
