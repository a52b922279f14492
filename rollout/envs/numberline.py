"""NumberLine (RL4VLM gym_cards): move the current number to the target one step at a time.

Rules (docs/anchors.md; RL4VLM ``gym_cards/envs/numberline.py``): start and target are uniform in
0..max_position (5); if equal, target = (target + 1) mod max_position. Actions "-" (down 1, floor 0)
and "+" (up 1, cap max_position). Reward +1 and terminated when current == target; -1 when the
distance to the target did not shrink; 0 otherwise. Truncated after 2 * max_position (10) steps.
Optimal play from distance d therefore earns 0 x (d - 1), then +1: return 1, success.
"""

from __future__ import annotations

from typing import Any

from PIL import ImageDraw

from rollout.envs.base import CardsEnv
from rollout.envs.render import BLACK, draw_text


class NumberLine(CardsEnv):
    """White image with "Target: g" above "Current: c" in big bold text.

    Below 160 pixels of width the labels shorten to "T: g" / "C: c" so the digits stay large.
    ``reset(options={"current": c, "target": g})`` fixes the state (c != g).
    """

    ACTIONS = ("-", "+")
    BACKGROUND = "white"

    def __init__(self, image_size: int | tuple[int, int] = 300, max_position: int = 5,
                 max_steps: int | None = None) -> None:
        if max_position < 2:
            raise ValueError(f"max_position: must be >= 2, got {max_position}")
        self.max_position = max_position
        super().__init__(image_size, max_steps if max_steps is not None else 2 * max_position)
        self.current, self.target = 0, 1

    def _new_state(self, options: dict[str, Any]) -> None:
        if "current" in options or "target" in options:
            c, g = int(options["current"]), int(options["target"])
            if c == g or not (0 <= c <= self.max_position and 0 <= g <= self.max_position):
                raise ValueError(f"NumberLine: need distinct values in 0..{self.max_position}")
            self.current, self.target = c, g
            return
        self.current = int(self.np_random.integers(0, self.max_position + 1))
        self.target = int(self.np_random.integers(0, self.max_position + 1))
        if self.current == self.target:
            self.target = (self.target + 1) % self.max_position

    def _apply(self, action: str) -> tuple[float, bool, bool]:
        before = abs(self.current - self.target)
        step = 1 if action == "+" else -1
        self.current = min(max(self.current + step, 0), self.max_position)
        after = abs(self.current - self.target)
        if after == 0:
            return 1.0, True, False
        return (-1.0 if after >= before else 0.0), False, False

    def _state_info(self) -> dict[str, Any]:
        return {"current": self.current, "target": self.target}

    def _draw(self, draw: ImageDraw.ImageDraw) -> None:
        w, h = self.width, self.height
        short = w < 160
        target = f"T: {self.target}" if short else f"Target: {self.target}"
        current = f"C: {self.current}" if short else f"Current: {self.current}"
        draw_text(draw, target, (w * 0.08, h * 0.06, w * 0.92, h * 0.44), BLACK, align="left")
        draw_text(draw, current, (w * 0.08, h * 0.56, w * 0.92, h * 0.94), BLACK, align="left")
