"""Zero copy: ``OrtValue`` and ``IOBinding`` over a backend's device buffers (SPEC.md 12).

Usage, the same on a board (RKNN) and on a laptop (onnxruntime)::

    frame = OrtValue.ortvalue_from_dmabuf(fd, [1, 1080, 1920, 3], np.uint8, size=n,
                                          session=sess, name="images", io_kind="input")
    binding = sess.io_binding()
    binding.bind_ortvalue_input("images", frame)
    binding.bind_output("scores")             # a buffer in session memory
    sess.run_with_iobinding(binding)          # or sess.submit(None, binding) -> Future
    scores = binding.copy_outputs_to_cpu()[0]

Values
    A *host* value (``device_type="cpu"``, no session) wraps a numpy array. A *device* value
    (``device_type="rknpu2"`` and ``session=``) owns one buffer of that session's memory; with
    ``name``/``io_kind`` it is laid out for that model tensor. The onnxruntime backend's session
    memory is host memory, so ``device_name()`` says ``"cpu"`` there, and the same code runs.
    ``numpy()`` of a device value is a copy in the logical layout (``shape()``); zero-copy outputs
    keep the model's own type (no dequantisation on RKNN).

Safety (what the original got wrong, SPEC.md 15.5)
    * A binding run takes a worker slot through the engine like any task, so it never races the
      workers; ``submit``/``run_async``/``arun`` accept a binding to pipeline frames across cores.
      One binding is one run at a time: submitting it again while in flight, or changing it then,
      raises; use one binding per frame in flight.
    * Buffers are freed exactly once: by ``OrtValue.release()``, when the value is collected, by
      ``IOBinding.clear_*``/``close()`` for buffers the binding allocated (``bind_cpu_input``,
      ``bind_output``), or at ``session.close()`` for all. A run pins its buffers, so a release
      during a run frees after it; a run whose value was released before it raises.
    * Shapes and dtypes are checked when a value is made and when it is bound, by the same code as
      feeds (``feeds.check_tensor``); a value of another session, a binding of another session, a
      closed binding each raise; after ``session.close()`` every call raises SessionClosedError.

Deliberate differences from the original: no silent casting (``ortvalue_from_numpy`` of an
``rknpu2`` value needs the tensor's dtype, as feeds do); ``bind_cpu_input`` copies into session
memory at bind time (as the original; onnxruntime reads the array at run time); ``mem_flags`` is
handed to the backend; ``element_type()`` of host values is their real type.

Modules, each depending only on those before it: ``memory`` (``SessionMemory``: the session's
tensors and open/closed state), ``values`` (``OrtValue`` and its argument parsers), ``binding``
(``SessionIOBinding`` and ``launch``, which claims a binding for one run). The backend side
(``DeviceBuffer``, ``Backend.allocate``...) is described in ``backends/base.py``.
"""

from __future__ import annotations

from .binding import IOBinding, SessionIOBinding, launch
from .memory import SessionMemory
from .values import OrtValue, parse_mem_flags

__all__ = [
    "OrtValue",
    "SessionIOBinding",
    "IOBinding",
    "SessionMemory",
    "launch",
    "parse_mem_flags",
]
