"""Rollout kinds: one registered class per kind (:mod:`rollout.kinds.base`).

Left empty on purpose: :mod:`rollout.config` imports the built-in kinds (which import the runtime
modules, which import :mod:`rollout.kinds.base`), so importing ``rollout.kinds.base`` alone never
pulls a runtime module in.
"""
