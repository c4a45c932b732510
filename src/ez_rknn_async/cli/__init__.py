"""The ``ez-rknn`` command line (an extra: ``pip install 'ez-rknn-async[cli]'``).

``main.py`` holds the top-level parser, the error-to-exit-code hook and the dispatch;
``commands/`` has one module per command (its sub-parser and ``run``); ``args.py`` the argument
types and options commands share. What the commands run: ``bench.py`` plans and runs a
benchmark, ``measure.py`` is its loop and drivers, ``comparators.py`` the runtimes measured next
to ours; ``stats.py`` is the pure arithmetic; ``report.py`` prints tables, JSON and plots;
``info.py``, ``doctor.py``, ``compare.py``, ``top.py`` and ``demo.py`` are the other commands'
logic; ``models.py`` finds models and makes inputs; ``errors.py`` maps errors to exit codes.
"""
