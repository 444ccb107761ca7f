"""Training-loop pieces: ``ResumableTrainLoop`` (``train_cfg = dict(type=ResumableTrainLoop, ...)``).

Importing this package also lets ``torch.load(weights_only=True)`` read mmengine's own checkpoints
(``src.engine.checkpoint``), which ``resume=True`` needs under torch >= 2.6, and makes every
checkpoint mmengine loads weights-only, whatever the environment says.
"""
from src.engine.checkpoint import allow_mmengine_checkpoints, force_weights_only_checkpoints
from src.engine.loops import ResumableTrainLoop

allow_mmengine_checkpoints()
force_weights_only_checkpoints()

__all__ = ['ResumableTrainLoop']
