"""The RKNPU3 backend: librknn3_api (RK1820/RK1828 co-processors, RK3572) through ctypes.

``abi`` (both ABI versions' struct tables, constants, error names), ``library`` (finding and
binding librknn3_api, detecting its ABI), ``model`` (RKNPU3 files and their ``.weight``),
``devices`` (discovery, core groups), ``attrs`` (attrs -> specs, host-side conversion),
``shapes`` (dynamic-shape models), ``memory`` (zero-copy values), ``context`` (opening a
context under a deadline), ``describe`` (the model's description), ``zero_copy``, ``runner`` (a
slot's run), ``backend`` (ties them into the Backend) and ``doctor`` (what this machine has).
Nothing here loads librknn3_api at import time.
"""
