"""The whole-image inference engine: one implementation under TorchGeo, MONAI and the CLI.

No TorchGeo or MONAI code lives here; the adapters call it.

- :mod:`~xt_plugins.infer.streaming`: region streaming (:func:`stream_predict`,
  :func:`stream_forward`), exact image-level outputs at bounded memory;
- :mod:`~xt_plugins.infer.dense`: dense windowed prediction (overlapping windows, centre crops
  or Hann-blended outputs written tile by tile, detections de-duplicated across window
  borders);
- :mod:`~xt_plugins.infer.precision`: mixed precision (autocast) and flip test-time
  augmentation;
- :mod:`~xt_plugins.infer.store`: the run store, keyed by the input's identity
  (:mod:`~xt_plugins.infer.identity`), resumable and validated;
- :mod:`~xt_plugins.infer.runner`: many inputs: expansion of files and folders, output naming,
  ``predictions.csv`` by input key, failure isolation, the torchrun rank split and merge.

.. versionadded:: 0.2
"""

from .identity import source_identity, weights_digest
from .store import RunStore, StoreError
from .streaming import StreamResult, as_source, cell_counts, stream_forward, stream_predict

__all__ = [
    "RunStore",
    "StoreError",
    "StreamResult",
    "as_source",
    "cell_counts",
    "source_identity",
    "stream_forward",
    "stream_predict",
    "weights_digest",
]
