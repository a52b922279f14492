"""Shared skeleton of the gym_cards environments (RL4VLM, Zhai et al. 2024).

Each environment is a ``gymnasium.Env`` whose actions are indices into a tuple of action strings
(``ACTIONS``, the words the policy writes in its JSON reply) and whose observation is an RGB image
(H, W, 3) uint8 drawn with Pillow. Subclasses implement three things: ``_new_state`` (deal/draw a
fresh state from ``self.np_random`` or from ``options``), ``_apply`` (the game rule of one action)
and ``_draw`` (the picture). This base class counts steps, accumulates the episode return, applies
the step cap (truncation) and builds the ``info`` dict.

``info`` always carries the symbolic state (so tests and text-only baselines need not read pixels)
plus ``step`` (steps taken), ``episode_return`` (sum of rewards so far) and ``success``, which is
True only once the episode has ended with a return > 0 (the paper's success criterion).

Randomness comes only from ``self.np_random``, seeded by ``reset(seed=...)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

StepResult = tuple[np.ndarray, float, bool, bool, dict[str, Any]]


def image_shape(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) from a side length or a (width, height) pair."""
    w, h = (image_size, image_size) if isinstance(image_size, int) else image_size
    if w < 16 or h < 16:
        raise ValueError(f"image_size: need at least 16x16 pixels, got {w}x{h}")
    return int(w), int(h)


class CardsEnv(gym.Env):
    """Base of NumberLine, EZPoints, Points24 and Blackjack (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}
    ACTIONS: ClassVar[tuple[str, ...]] = ()
    """Action strings; the action index of ``step`` indexes this tuple."""
    BACKGROUND: ClassVar[str] = "white"

    def __init__(self, image_size: int | tuple[int, int], max_steps: int) -> None:
        self.width, self.height = image_shape(image_size)
        if max_steps < 1:
            raise ValueError(f"max_steps: must be >= 1, got {max_steps}")
        self.max_steps = max_steps
        self.render_mode = "rgb_array"
        self.action_space = spaces.Discrete(len(self.ACTIONS))
        self.observation_space = spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        self._steps, self._return, self._done = 0, 0.0, True

    # --- gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; ``options`` may fix the state (see each subclass's ``_new_state``)."""
        super().reset(seed=seed)
        self._steps, self._return, self._done = 0, 0.0, False
        self._new_state(dict(options or {}))
        return self.render(), self._info()

    def step(self, action) -> StepResult:
        """Apply action index ``action``; returns (obs, reward, terminated, truncated, info)."""
        if self._done:
            raise RuntimeError(f"{type(self).__name__}.step: episode has ended; call reset()")
        index = int(action)
        if not 0 <= index < len(self.ACTIONS):
            raise ValueError(f"action index {index} out of range for {self.ACTIONS}")
        reward, terminated, truncated = self._apply(self.ACTIONS[index])
        return self._finish(reward, terminated, truncated)

    def step_invalid(self, penalty: float) -> StepResult:
        """A step whose reply could not be parsed: state unchanged, reward ``penalty``.

        It counts towards ``max_steps``, so a policy that never answers validly is still truncated.
        """
        if self._done:
            raise RuntimeError(f"{type(self).__name__}.step_invalid: episode ended; call reset()")
        return self._finish(penalty, False, False)

    def render(self) -> np.ndarray:
        """The current observation: (H, W, 3) uint8 RGB."""
        img = Image.new("RGB", (self.width, self.height), self.BACKGROUND)
        self._draw(ImageDraw.Draw(img))
        return np.array(img, dtype=np.uint8)

    @property
    def episode_over(self) -> bool:
        return self._done

    # --- bookkeeping ---------------------------------------------------------------------------

    def _finish(self, reward: float, terminated: bool, truncated: bool) -> StepResult:
        """Count the step, add the reward, truncate at ``max_steps``, build the step tuple."""
        self._steps += 1
        self._return += float(reward)
        truncated = truncated or (not terminated and self._steps >= self.max_steps)
        self._done = terminated or truncated
        return self.render(), float(reward), terminated, truncated, self._info()

    def _info(self) -> dict[str, Any]:
        return {
            **self._state_info(),
            "step": self._steps,
            "episode_return": self._return,
            "success": self._done and self._return > 0,
        }

    # --- game-specific -------------------------------------------------------------------------

    def _new_state(self, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def _apply(self, action: str) -> tuple[float, bool, bool]:
        """Apply one legal action string; returns (reward, terminated, truncated)."""
        raise NotImplementedError

    def _state_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def _draw(self, draw: ImageDraw.ImageDraw) -> None:
        raise NotImplementedError
