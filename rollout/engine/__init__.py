"""Inference engines behind one interface (see :mod:`rollout.engine.base`)."""

from rollout.engine.base import AdapterRef, AdapterRejected, Completion, Engine, Request, Sampling

__all__ = ["AdapterRef", "AdapterRejected", "Completion", "Engine", "Request", "Sampling"]
