"""Recipes shipped with duet-rl (TOML files beside this module).

- ``default.toml``: the embedded default run of ``duet train`` (and the README's main command).
- ``immo_dialogue.toml``: IMMO Reasoner (text LM) / Observer (VLM) dialogues, alternating training.
- ``cryptogram_grpo.toml``: r1_vlm-style cryptogram decoding with GRPO.
- ``numberline_ppo.toml``: RL4VLM NumberLine with PPO (value head, GAE, lambda CoT scaling).
"""

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
DEFAULT_RECIPE = RECIPES_DIR / "default.toml"


def recipe_path(name: str) -> Path:
    """A shipped recipe by name ("default", "immo_dialogue", ...) or any existing file path."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{name}.toml"
    if shipped.is_file():
        return shipped
    known = sorted(f.stem for f in RECIPES_DIR.glob("*.toml"))
    raise FileNotFoundError(f"recipe {name!r}: no such file, and not a shipped recipe {known}")
