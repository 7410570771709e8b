"""The training engine every method runs on, split by concern:

- ``dist``: processes, devices and DistributedDataParallel (gradients summed over processes during
  the backward pass), sharded decoding;
- ``precision``: bf16 / fp16 autocast and the fp16 gradient scaler;
- ``optim``: optimiser, per-group clipping, learning-rate factors;
- ``objectives``: f and g normalised over the global batch, the joint step's penalised backward;
- ``run``: ``Run``, what a method sets up the same way (data streams, model, optimiser, the guarded
  step, validation, checkpoints, metrics), and each method's typed checkpointed state.

A method's file (``bljust/methods/<method>.py``) builds a ``Run`` and writes its own loop with it.
Import the submodules directly; this package imports none of them, so ``bljust.data`` can raise
``TrainingFailed`` without an import cycle.
"""


class TrainingFailed(RuntimeError):
    """A run that cannot train (e.g. too many skipped steps); its message says why, naming the data."""
