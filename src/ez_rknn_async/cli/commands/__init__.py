"""One module per ``ez-rknn`` command, as in huggingface_hub's CLI: each ``register(subparsers)``
adds its sub-parser (options, ``--help`` text) and sets ``func`` to its ``run(args) -> exit code``.

The logic a command runs lives in the ``cli`` modules beside this package (``bench``, ``compare``,
``info`` ...), imported inside ``run`` where it is heavy, so ``ez-rknn --help`` stays quick.
"""

from __future__ import annotations

from . import bench, compare, demo, doctor, info, serve, top

__all__ = ["COMMANDS"]

#: In the order ``ez-rknn --help`` lists them.
COMMANDS = (info, bench, compare, doctor, top, demo, serve)
