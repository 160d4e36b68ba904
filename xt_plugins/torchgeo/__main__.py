"""``python -m xt_plugins.torchgeo ARGS``: TorchGeo's command line with the xT models registered.

Same as ``xt-plugins torchgeo ARGS``: ``python -m xt_plugins.torchgeo fit --config X``.

.. versionadded:: 0.2
"""

import sys

from ..commands import run_torchgeo

if __name__ == "__main__":
    sys.exit(run_torchgeo(sys.argv[1:]))
