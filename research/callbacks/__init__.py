"""Lightning callbacks that plug into any task from the YAML (trainer.callbacks)."""

from research.callbacks.rng_state import RNGState

__all__ = ["RNGState"]
