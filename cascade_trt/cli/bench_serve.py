"""`cascade-trt bench-serve --out DIR`: load-test a running `cascade-trt serve` on this machine.

    cascade-trt bench-serve --url http://127.0.0.1:8000 --concurrency 1 4 16 --requests 200 --out results/

Writes DIR/serve.json (records, environment, the service's settings) and DIR/serve.md; exits 1 if any request
failed. See cascade_trt.benchmarks.serve for what each figure means.
"""

from __future__ import annotations

import argparse
import os
import sys

from cascade_trt.cli.argtypes import DefaultsHelpFormatter, add_steps_argument, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-serve",
        help="load-test a running image service: throughput, latency percentiles, batch sizes, errors",
        description="Sends --requests requests at each --concurrency to the service at --url (a loopback "
        "address) and writes JSON and markdown. Start the service first with `cascade-trt serve`.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service, on this machine")
    p.add_argument("--requests", type=positive_int, default=200, help="requests per concurrency")
    p.add_argument(
        "--concurrency", nargs="+", type=positive_int, default=[1, 4, 16], help="requests in flight"
    )
    p.add_argument(
        "--size", default=None, help="WIDTHxHEIGHT of every request (default: the service's first)"
    )
    p.add_argument("--n", type=positive_int, default=1, help="images per request")
    add_steps_argument(p)
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a request may take before it is an error"
    )
    p.add_argument("--api-key", default=None, help="the service's key (default: CASCADE_TRT_API_KEY)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for serve.json and serve.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade_trt.artifacts import check_output_dir, write_text
    from cascade_trt.benchmarks import report
    from cascade_trt.benchmarks.serve import LoadConfig, markdown
    from cascade_trt.benchmarks.serve import run as run_load
    from cascade_trt.serve.config import API_KEY_ENV

    out = check_output_dir(args.out, "--out")
    cfg = LoadConfig(
        url=args.url,
        requests=args.requests,
        concurrency=tuple(args.concurrency),
        size=args.size,
        n=args.n,
        prior_num_inference_steps=args.steps[0],
        num_inference_steps=args.steps[1],
        timeout_s=args.timeout,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
    )
    doc = run_load(cfg, progress=lambda m: print(m, file=sys.stderr))
    report.write_json(doc, out / "serve.json")
    text = markdown(doc)
    write_text(out / "serve.md", text)
    print(text)
    failed = sum(len(r["errors"]) for r in doc["records"])
    if failed:
        print(f"cascade-trt bench-serve: {failed} request(s) failed (listed under Errors)", file=sys.stderr)
    return 1 if failed else 0
