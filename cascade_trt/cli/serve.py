"""`cascade-trt serve --prior P --decoder D`: the HTTP image service (OpenAI's Images API) on Ray Serve.

    cascade-trt serve --prior ckpt/prior --decoder ckpt/decoder --device cpu --sizes 256x256
    cascade-trt serve --prior P --decoder D --backend tensorrt --engine-dir engines/ --replicas 4 --address auto

Without --address, Ray starts inside this command (loopback only); it blocks until Ctrl-C, then finishes the
requests in flight and stops. The API key comes from --api-key or CASCADE_TRT_API_KEY and is never printed.
"""

from __future__ import annotations

import argparse
import os

from cascade_trt.cli.argtypes import DefaultsHelpFormatter, non_negative_int, positive_int
from cascade_trt.cli.pipeline_args import add_pipeline_arguments, pipeline_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve images over HTTP (OpenAI Images API) on Ray Serve, from one CPU process to a GPU cluster",
        description="Starts (or joins, with --address) Ray, deploys a model deployment of CascadePipeline "
        "replicas behind a FastAPI ingress, and serves POST /v1/images/generations, GET /health and GET /ready "
        "until Ctrl-C. Needs the serve extra: pip install 'cascade-trt[serve]'.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_pipeline_arguments(p)
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["1024x1024"],
        metavar="WxH",
        help="the sizes served, WIDTHxHEIGHT as in the API (each warmed up at every batch when a replica starts)",
    )
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=positive_int, default=1, help="model replicas (one pipeline each)")
    scale.add_argument(
        "--autoscale",
        nargs=2,
        type=non_negative_int,
        metavar=("MIN", "MAX"),
        help="let Ray Serve scale the model replicas between MIN and MAX with the load",
    )
    p.add_argument(
        "--gpus-per-replica",
        type=float,
        default=None,
        help="GPUs per model replica (default: 1 on cuda, 0 on cpu)",
    )
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs Ray reserves per model replica")
    p.add_argument(
        "--max-batch", type=positive_int, default=4, help="images per pipeline call (and per request)"
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="how long a batch waits for more requests (0: no batching wait)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a request gets 504")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the service)")
    p.add_argument("--port", type=positive_int, default=8000, help="HTTP port")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to deploy onto: auto or ray://HOST:10001 (default: a local Ray)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require Authorization: Bearer KEY on every request but /health and /ready (or set CASCADE_TRT_API_KEY)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade_trt.serve import require_serve
    from cascade_trt.serve.config import API_KEY_ENV, ServeConfig, parse_size

    require_serve()  # exit 2 with the pip command before anything loads
    config = ServeConfig(
        prior=args.prior,
        decoder=args.decoder,
        **pipeline_options(args),
        sizes=tuple(parse_size(s) for s in args.sizes),
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        timeout_s=args.timeout,
        replicas=args.replicas,
        autoscale=tuple(args.autoscale) if args.autoscale else None,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
    )
    from cascade_trt.serve.run import serve_forever

    serve_forever(config, host=args.host, port=args.port, address=args.address)
    return 0
