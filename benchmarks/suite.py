"""What runs: backends x sizes x batches, timed stage by stage, interleaved, into JSON-ready records.

For each (size, batch) every backend is warmed up, then the repeats are interleaved: repeat r runs every
backend once, in an order rotated by r. A load spike on a shared machine then lands on all backends alike
instead of on whichever happened to run during it, which is what keeps the ratios to the baseline honest.
Within one call a clock mark sits between consecutive stage calls (see `drivers`), so the stage spans add up
to the end-to-end span.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cascade_trt.benchmarks import BACKENDS, BASELINE, costs, environment
from cascade_trt.benchmarks.builders import Built, build_drivers
from cascade_trt.benchmarks.drivers import Driver, Workload, unavailable_reason
from cascade_trt.benchmarks.forward import bare_forwards
from cascade_trt.benchmarks.memory import PeakMemory
from cascade_trt.benchmarks.timing import Clock, make_clock, summarize
from cascade_trt.checkpoints import CheckpointPair
from cascade_trt.devices import check_device

log = logging.getLogger("cascade_trt.bench")

SCHEMA = "cascade_trt.bench/1"
METRICS = (
    "text_encoder",
    "stage_c_loop",
    "stage_c_step",
    "stage_b_loop",
    "stage_b_step",
    "stage_a",
    "end_to_end",
)
# Stage spans that add up to end_to_end (the per-step figures are loop / steps).
STAGE_SPANS = ("text_encoder", "stage_c_loop", "stage_b_loop", "stage_a")
PROMPTS = (
    "an astronaut riding a horse, detailed oil painting",
    "a lighthouse on a cliff at dusk, volumetric light",
    "a bowl of ramen, studio photograph, shallow depth of field",
    "a red fox in fresh snow, telephoto",
)


@dataclass(frozen=True)
class SuiteConfig:
    preset: str = "tiny"
    backends: tuple[str, ...] | None = None  # None: every backend that can run on the device
    sizes: tuple[tuple[int, int], ...] = ((256, 256),)
    batches: tuple[int, ...] = (1,)
    steps_c: int = 20
    steps_b: int = 10
    guidance_c: float = 4.0
    guidance_b: float = 0.0
    warmup: int = 1
    repeats: int = 5
    device: str = "cpu"
    precision: str | dict[str, str] = "auto"  # as PrecisionPolicy.resolve takes it
    baseline_precision: str | dict[str, str] | None = None  # diffusers' own; None: the same as `precision`
    checkpoints: CheckpointPair | None = (
        None  # real checkpoints; None: the preset's architecture, random weights
    )
    onnx_dir: str | None = None  # ONNX graphs to reuse for onnxruntime; None: exported into a temporary dir
    engine_dir: str | None = None  # TensorRT engines (tensorrt runs only with them)
    seed: int = 0

    def __post_init__(self) -> None:
        from cascade_trt.errors import ConfigError

        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"need repeats >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        if self.warmup < 1 and torch.device(self.device).type == "cuda":
            raise ConfigError(
                "--warmup 0 on CUDA would time graph capture and compilation as a call: use --warmup 1 or more"
            )
        if not self.batches or any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ConfigError(f"--batch: images per call must be positive integers, got {list(self.batches)}")
        if self.steps_c < 1 or self.steps_b < 1:
            raise ConfigError(f"need at least one step per stage, got {self.steps_c} and {self.steps_b}")


def choose_backends(requested: tuple[str, ...] | None, device: torch.device) -> tuple[list[str], list[dict]]:
    """Backends to run (baseline first) and the skipped ones with their reasons."""
    explicit = requested is not None
    names = list(dict.fromkeys(requested or BACKENDS))
    run, skipped = [], []
    for name in names:
        reason = unavailable_reason(name, device, explicit=explicit)
        if reason is None:
            run.append(name)
        else:
            skipped.append({"backend": name, "reason": reason})
    run.sort(key=lambda n: n != BASELINE)
    return run, skipped


def run_suite(
    cfg: SuiteConfig,
    *,
    workdir: str,
    progress: Callable[[str], None] = log.info,
    on_shape: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole suite; returns the results document (see `schema`).

    `on_shape`, when given, receives the document so far after each (size, batch) is measured, marked
    `incomplete`, so a run cut short can still leave what it measured on disk.
    """
    device = check_device(cfg.device)
    load_start = environment.load_average()
    names, skipped = choose_backends(cfg.backends, device)
    for s in skipped:
        progress(f"skip {s['backend']}: {s['reason']}")
    built = build_drivers(cfg, names, device=device, workdir=workdir, progress=progress)
    skipped += built.skipped
    peak_tflops = _matrix_peak(device, progress)
    clock, memory = make_clock(device), PeakMemory(device)
    records: list[dict[str, Any]] = []

    def document() -> dict[str, Any]:
        env = environment.collect(device)
        env["load_average_start"], env["load_average_end"] = load_start, environment.load_average()
        return {
            "schema": SCHEMA,
            "environment": env,
            "config": _config_json(cfg, built),
            "clock": clock.kind,
            "baseline": BASELINE,
            "matmul_peak_tflops": peak_tflops,
            "records": list(records),
            "skipped": list(skipped),
        }

    if not built.drivers:
        progress("no backend can run: nothing to measure")
    shapes = [(h, w, b) for h, w in cfg.sizes for b in cfg.batches] if built.drivers else []
    for done, (height, width, batch) in enumerate(shapes, 1):
        work = _workload(cfg, height, width, batch)
        progress(f"measuring {height}x{width} batch {batch}: {', '.join(built.drivers)}")
        result = measure(built.drivers, work, clock, memory, cfg.warmup, cfg.repeats)
        skipped += result.failed
        records += _shape_records(built, work, result, memory.kind, peak_tflops, progress)
        for driver in built.drivers.values():
            driver.release()  # this shape's buffers and graphs: a sweep must not pile them up
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if on_shape is not None and done < len(shapes):
            on_shape({**document(), "incomplete": f"{done} of {len(shapes)} shapes measured"})
    return document()


def _shape_records(
    built: Built,
    work: Workload,
    result: ShapeResult,
    memory_kind: str,
    peak_tflops: float | None,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One record per backend measured at this shape, with its ratios to the baseline and to the floor."""
    records = [
        _record(name, work, result, memory_kind, built.precision[name])
        for name in built.drivers
        if name in result.samples
    ]
    add_ratios(records)
    add_floor(records, costs.cost_key(built.config), peak_tflops)
    for r in records:
        speedup = r.get("speedup_vs_baseline", {}).get("end_to_end")
        note = f" ({speedup:.2f}x {BASELINE})" if speedup else ""
        progress(f"  {r['backend']}: end to end {r['timings_s']['end_to_end']['median'] * 1e3:.1f} ms{note}")
    return records


def _workload(cfg: SuiteConfig, height: int, width: int, batch: int) -> Workload:
    prompts = tuple(PROMPTS[i % len(PROMPTS)] for i in range(batch))
    return Workload(
        prompts=prompts,
        height=height,
        width=width,
        steps_c=cfg.steps_c,
        steps_b=cfg.steps_b,
        guidance_c=cfg.guidance_c,
        guidance_b=cfg.guidance_b,
        seed=cfg.seed,
    )


def run_once(driver: Driver, work: Workload, clock: Clock) -> tuple[dict[str, float], torch.Tensor]:
    """One end-to-end call, stage by stage; the spans in seconds and the images."""
    generator = torch.Generator("cpu").manual_seed(work.seed)
    marks = [clock.mark()]
    emb = driver.encode(work)
    marks.append(clock.mark())
    effnet = driver.stage_c(emb, work, generator)
    marks.append(clock.mark())
    latents = driver.stage_b(emb, effnet, work, generator)
    marks.append(clock.mark())
    images = driver.stage_a(latents)
    marks.append(clock.mark())
    clock.sync()
    spans = {name: clock.seconds(a, b) for name, a, b in zip(STAGE_SPANS, marks[:-1], marks[1:], strict=True)}
    spans["end_to_end"] = clock.seconds(marks[0], marks[-1])
    spans["stage_c_step"] = spans["stage_c_loop"] / work.steps_c
    spans["stage_b_step"] = spans["stage_b_loop"] / work.steps_b
    return spans, images


@dataclass
class ShapeResult:
    """Raw measurements of every backend at one shape."""

    samples: dict[str, dict[str, list[float]]]  # backend -> metric -> seconds per call
    peaks: dict[str, int]  # backend -> peak bytes over its timed calls
    call_bytes: dict[str, int]  # backend -> most working memory one timed call added (see memory)
    forwards: dict[str, dict[str, list[float]]]  # backend -> denoiser -> seconds per bare forward
    failed: list[dict[str, Any]]


def measure(
    drivers: dict[str, Driver], work: Workload, clock: Clock, memory: PeakMemory, warmup: int, repeats: int
) -> ShapeResult:
    """Warm up every driver, then interleave the repeats. A driver that raises is dropped for this shape."""
    failed: list[dict[str, Any]] = []
    live = dict(drivers)

    def attempt(name: str) -> dict[str, float] | None:
        try:
            spans, images = run_once(live[name], work, clock)
            check_images(images, work)
            return spans
        except Exception as exc:  # one broken backend must not end the others' run; the reason is recorded
            log.warning("%s failed at %dx%d batch %d: %s", name, work.height, work.width, work.batch, exc)
            failed.append(_failure(name, work, exc))
            del live[name]
            return None

    for name in list(live):
        for _ in range(warmup):
            if name in live:
                attempt(name)
    samples: dict[str, dict[str, list[float]]] = {n: {m: [] for m in METRICS} for n in live}
    peaks, call_bytes = dict.fromkeys(live, 0), dict.fromkeys(live, 0)
    for r in range(repeats):
        for name in rotated(list(live), r):
            memory.reset()
            spans = attempt(name)
            if spans is None:
                samples.pop(name, None)
                continue
            memory.add_graph_pool(live[name].graph_pool_bytes())
            peaks[name] = max(peaks[name], memory.read())
            call_bytes[name] = max(call_bytes[name], memory.call_bytes())
            for metric, value in spans.items():
                samples[name][metric].append(value)
    return ShapeResult(samples, peaks, call_bytes, time_forwards(live, work, clock, repeats), failed)


def rotated(names: list[str], r: int) -> list[str]:
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


def time_forwards(
    drivers: dict[str, Driver], work: Workload, clock: Clock, repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Bare forwards of each denoiser (see `forward`), warmed up once, interleaved like the calls."""
    calls = {}
    for name, driver in drivers.items():
        try:
            calls[name] = bare_forwards(driver, work)
            for forward in calls[name].values():
                forward()  # warm-up: binds the shape, compiles, fills caches
        except Exception as exc:  # the loop-overhead split is optional; the call timings stand without it
            log.warning("no bare-forward timing for %s: %s: %s", name, type(exc).__name__, exc)
            calls.pop(name, None)
    out: dict[str, dict[str, list[float]]] = {n: {s: [] for s in fs} for n, fs in calls.items()}
    for r in range(repeats):
        for name in rotated(list(calls), r):
            for stage, forward in calls[name].items():
                start = clock.mark()
                forward()
                end = clock.mark()
                clock.sync()
                out[name][stage].append(clock.seconds(start, end))
    return out


def check_images(images: torch.Tensor, work: Workload) -> None:
    """Every backend must produce the images asked for: a fast wrong answer is not a result."""
    expected = (work.batch, 3, work.height, work.width)
    if tuple(images.shape) != expected:
        raise RuntimeError(f"images have shape {tuple(images.shape)}, expected {expected}")
    if not bool(torch.isfinite(images).all()):
        raise RuntimeError("images contain NaN or infinite values")


def _failure(name: str, work: Workload, exc: Exception) -> dict[str, Any]:
    return {
        "backend": name,
        "height": work.height,
        "width": work.width,
        "batch": work.batch,
        "reason": f"failed: {type(exc).__name__}: {exc}"[:500],
    }


def _record(
    name: str, work: Workload, result: ShapeResult, memory_kind: str, precision: dict[str, str]
) -> dict[str, Any]:
    samples = result.samples[name]
    timings = {m: summarize(v).to_json() for m, v in samples.items()}
    record = {
        "backend": name,
        "height": work.height,
        "width": work.width,
        "batch": work.batch,
        "steps_c": work.steps_c,
        "steps_b": work.steps_b,
        "guidance_c": work.guidance_c,
        "guidance_b": work.guidance_b,
        "precision": precision,
        "timings_s": timings,
        "samples_s": samples,
        "images_per_s": work.batch / timings["end_to_end"]["median"],
        "peak_memory_bytes": result.peaks[name],
        "call_memory_bytes": result.call_bytes[name],
        "memory_kind": memory_kind,
    }
    forwards = result.forwards.get(name)
    if forwards:
        record["forward_samples_s"] = forwards
        record["forward_s"] = {s: summarize(v).to_json() for s, v in forwards.items()}
        record["loop_overhead"] = {
            s: 1.0 - record["forward_s"][s]["median"] / timings[f"{s}_step"]["median"] for s in forwards
        }
    return record


def add_ratios(records: list[dict[str, Any]]) -> None:
    """Speed-up over the baseline measured in the same run at the same shape: baseline median / this median."""
    base = next((r for r in records if r["backend"] == BASELINE), None)
    if base is None:
        return
    for r in records:
        r["speedup_vs_baseline"] = {
            m: base["timings_s"][m]["median"] / r["timings_s"][m]["median"] for m in METRICS
        }


def add_floor(records: list[dict[str, Any]], preset: str | None, peak_tflops: float | None) -> None:
    """Fraction of the compute floor reached (floor seconds / measured median), where it can be computed."""
    if preset is None or peak_tflops is None:
        return
    for r in records:
        keys = ("height", "width", "batch", "steps_c", "steps_b", "guidance_c", "guidance_b")
        shape = costs.RunShape(**{k: r[k] for k in keys})
        floor = costs.floor_seconds(preset, shape, peak_tflops)
        if floor is None:
            return
        spans = {"text_encoder": "text_encoder", "stage_c": "stage_c_loop", "stage_b": "stage_b_loop"}
        spans |= {"stage_a": "stage_a", "end_to_end": "end_to_end"}
        r["floor_s"] = {spans[k]: v for k, v in floor.items()}
        r["floor_fraction"] = {
            metric: seconds / r["timings_s"][metric]["median"] for metric, seconds in r["floor_s"].items()
        }


def _matrix_peak(device: torch.device, progress: Callable[[str], None]) -> float | None:
    if device.type != "cuda":
        return None
    from cascade_trt.benchmarks.peak import matmul_peak_tflops

    peak = matmul_peak_tflops(device)
    progress(f"measured bf16 matrix peak: {peak:.0f} TFLOP/s")
    return peak


def _config_json(cfg: SuiteConfig, built: Built) -> dict[str, Any]:
    out = asdict(cfg)
    del out["checkpoints"]  # machine paths: only whether they were given is kept (prior, decoder below)
    out["prior"] = out["decoder"] = cfg.checkpoints is not None
    out["sizes"] = [list(s) for s in cfg.sizes]
    out["batches"] = list(cfg.batches)
    out["backends"] = list(cfg.backends) if cfg.backends is not None else None
    out["checkpoints"] = built.checkpoints
    # The preset names random-weight runs; a checkpoint run is named after its directories (names, not paths).
    out["architecture"] = built.config.name if built.config is not None else cfg.preset
    # ONNX and engine locations are machine paths too: keep only whether they were given.
    for key in ("onnx_dir", "engine_dir"):
        out[key] = out[key] is not None
    return out
