"""`cascade-trt serve`'s lifetime: start or join Ray, deploy the application, block, shut down cleanly.

Without an address Ray starts here, embedded in this process, its services on the loopback interface only
(nothing to start beforehand; a CPU laptop with `make-tiny` checkpoints is enough). With an address (`auto`,
`ray://host:10001`) the application is deployed onto that cluster, and Ctrl-C deletes it again, leaving the
cluster and its other applications as they were.

On Ctrl-C (or SIGTERM) Serve stops taking requests, every replica finishes what it holds (up to the request
timeout), and only then does Ray stop.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from cascade_trt.serve import require_serve
from cascade_trt.serve.config import ServeConfig

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve_forever(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    on_ready: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> None:
    """Serve `config` on http://host:port until Ctrl-C, SIGTERM or `stop` is set."""
    require_serve()
    import ray
    from ray import serve

    from cascade_trt.serve.app import APP_NAME, build

    embedded = address is None
    _start_ray(ray, address)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(config), name=APP_NAME, route_prefix="/")
        on_ready(f"serving {config.prior} + {config.decoder} at http://{host}:{port} (Ctrl-C stops)")
        _wait(stop or threading.Event())
    finally:
        log.info("shutting down: the requests in flight finish first")
        # Deleting the application drains it: each replica finishes what it holds (up to the request timeout)
        # while the HTTP proxy still delivers the answers. serve.shutdown alone stops the proxy first.
        serve.delete(APP_NAME)
        if embedded:
            serve.shutdown()
            ray.shutdown()


def _start_ray(ray: Any, address: str | None) -> None:
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    # Embedded: every Ray service on loopback, as the HTTP port is by default.
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, logging_level=logging.WARNING)


def _wait(stop: threading.Event) -> None:
    """Block until `stop`, Ctrl-C or SIGTERM. Both signals get a handler here: a shell starts a background job
    with SIGINT ignored, and `kill -INT` should stop the service all the same."""
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    if main:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, _interrupt)
    try:
        while not stop.wait(timeout=1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
