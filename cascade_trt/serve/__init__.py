"""An HTTP image service on Ray Serve: OpenAI's Images API in front of `CascadePipeline` replicas.

| module | job |
|---|---|
| `config` | `ServeConfig`: the model, the sizes served, batching, limits, scaling, access |
| `schema` | request and response of the API, the service's limits, errors in OpenAI's shape |
| `worker` | one pipeline serving requests: validation against it, grouped calls, PNGs (no Ray) |
| `batcher` | requests gathered into pipeline calls when the pipeline is free (no Ray) |
| `model` | the model deployment: a worker and a batcher per replica |
| `ingress` | the FastAPI ingress deployment: auth, body limit, status codes, timeouts |
| `app` | the application (`build`, and `build_app` for `serve run` / `serve deploy`) |
| `run` | `cascade-trt serve`: an embedded local Ray or a cluster, until Ctrl-C |

Importing this package imports no Ray: `build_app` does, on first use, and `require_serve` says what to install
where it is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from cascade_trt.errors import BackendUnavailableError

INSTALL = "pip install 'cascade-trt[serve]'"


def require_serve() -> None:
    """BackendUnavailableError with the pip command unless Ray Serve and FastAPI can be imported."""
    missing = [name for name in ("ray", "fastapi") if importlib.util.find_spec(name) is None]
    if not missing and importlib.util.find_spec("ray.serve") is None:
        missing = ["ray[serve]"]
    if missing:
        raise BackendUnavailableError(
            f"serving needs Ray Serve ({', '.join(missing)} not installed): {INSTALL}"
        )


def build_app(args: Mapping[str, Any]) -> Any:
    """Ray Serve's application builder: `serve run cascade_trt.serve:build_app prior=P decoder=D ...`."""
    require_serve()
    from cascade_trt.serve.app import build_app as build

    return build(args)
