"""The ``ez-rknn`` command line (an extra: ``pip install 'ez-rknn-async[cli]'``).

``main.py`` parses and dispatches; ``bench.py`` measures; ``stats.py`` is the pure arithmetic;
``report.py`` prints tables, JSON and plots; ``info.py``, ``doctor.py`` and ``demo.py`` are the
other commands; ``models.py`` finds models and makes inputs; ``errors.py`` maps errors to exit
codes.
"""
