"""The RKNN backend: librknnrt through ctypes.

``abi`` (structs, constants, error names as data), ``library`` (finding and binding librknnrt),
``soc`` (SoC and NPU cores), ``custom_ops`` (op plugins), ``attrs`` (queried attrs -> specs),
``context`` (the context tree and its destroy order), ``memory`` (zero-copy buffers and native
layouts), ``backend`` (the backend and its runners), ``doctor`` (what this machine has),
``kernel`` (the NPU's kernel files: load, clocks, SRAM, which driver) and ``model_file`` (what an
.rknn file states about its toolkit).
Nothing here loads librknnrt at import time.
"""
