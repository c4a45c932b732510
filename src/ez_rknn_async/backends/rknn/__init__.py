"""The RKNN backend: librknnrt through ctypes.

``abi`` (structs, constants, error names as data), ``library`` (finding and binding librknnrt),
``soc`` (SoC and NPU cores), ``custom_ops`` (op plugins), ``backend`` (contexts and runners) and
``doctor`` (what this machine has). Nothing here loads librknnrt at import time.
"""
