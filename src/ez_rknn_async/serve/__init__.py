"""``ez-rknn serve``: the Open Inference Protocol (KServe v2) over HTTP and gRPC (``[serve]``).

    protocol.py    datatypes, tensors, requests/responses, errors -> status codes (pure)
    rest.py        the HTTP bodies: JSON tensors and the binary data extension (pure)
    repository.py  the served models: sessions, in-flight limits, metadata, warm-up
    http.py        the Starlette app (uvicorn runs it)
    grpc_service.py  inference.GRPCInferenceService on grpc.aio (grpc_schema: its messages)
    metrics.py     Prometheus metrics, and the NpuLoadSource hook for per-core NPU load
    engine_metrics.py  the sessions' ``stats()`` as ``ez_rknn_engine_*``, read at each scrape
    config.py      model specs from the command line and the --config file
    parts.py       the repository, metrics and body budget a server holds, and its HTTP app
    server.py      both transports on one loop, readiness, SIGTERM/SIGINT

A request is ``await session.arun(...)`` between decoding and encoding; the transports only
translate. A Ray Serve replica (``ez_rknn_async.ray.deployment``) builds the same ``parts``
and runs the same HTTP app as its ingress.
"""
