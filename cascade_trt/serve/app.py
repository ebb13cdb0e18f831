"""The Serve application: the ingress deployment in front of the model deployment, scaled as configured.

    serve run cascade_trt.serve:build_app prior=ckpt/prior decoder=ckpt/decoder sizes=1024x1024
    serve deploy deploy/serve.yaml

`build` takes a `ServeConfig` (what `cascade-trt serve` does); `build_app` is Ray's application builder, taking
the `key=value` arguments of `serve run` or a config file's `args:`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from cascade_trt.serve.config import ServeConfig
from cascade_trt.serve.ingress import CascadeIngress
from cascade_trt.serve.model import CascadeModel

APP_NAME = "cascade"
QUEUED_BATCHES = 4  # requests a model replica holds: this many full batches, validated, in its batch queue


def build(config: ServeConfig) -> Application:
    scaling: dict[str, Any]
    if config.autoscale is None:
        scaling = {"num_replicas": config.replicas}
    else:
        low, high = config.autoscale
        scaling = {
            "autoscaling_config": {
                "min_replicas": low,
                "max_replicas": high,
                "target_ongoing_requests": config.max_batch,  # a full batch per replica, no more waiting
            }
        }
    model = CascadeModel.options(
        **scaling,
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus},
        max_ongoing_requests=QUEUED_BATCHES * config.max_batch,
        # On shutdown or scale-down a replica finishes what it holds, as long as a request may take.
        graceful_shutdown_timeout_s=config.timeout_s,
    ).bind(config)
    # The ingress holds each request as long as the model does: it drains on shutdown as long.
    return CascadeIngress.options(graceful_shutdown_timeout_s=config.timeout_s).bind(model, config)


def build_app(args: Mapping[str, Any]) -> Application:
    """Ray Serve's application builder (`serve run cascade_trt.serve:build_app key=value ...`)."""
    return build(ServeConfig.from_mapping(args))
