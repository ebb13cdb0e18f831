"""Write a random Stable Cascade in diffusers format, laid out as the hub checkpoints are.

`make_pipelines(out)` writes `out/prior` (a `StableCascadePriorPipeline`, with image encoder) and
`out/decoder` (a `StableCascadeDecoderPipeline`), each through diffusers' own `save_pretrained`, with the
offline tokenizer. The default configuration is the `tiny` preset (a few MB, for tests); any preset works.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cascade_trt.artifacts import check_output_dir
from cascade_trt.configs import TINY, CascadeConfig
from cascade_trt.errors import ConfigError
from cascade_trt.random_weights import random_components


def make_pipelines(
    out: str | Path, config: CascadeConfig = TINY, *, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write `out/prior` and `out/decoder`; returns `out`. Atomic: a crash leaves no half-written pipeline."""
    from transformers import CLIPImageProcessor

    out = check_output_dir(out, "make-tiny DIR")
    targets = [out / "prior", out / "decoder"]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} already exists: choose another directory, or overwrite it (--overwrite, overwrite=True)"
        )
    out.mkdir(parents=True, exist_ok=True)

    stages = ("text_encoder", "image_encoder", "stage_c", "stage_b", "stage_a")
    parts = random_components(config, stages=stages, seed=seed)
    size = config.image_encoder.image_size if config.image_encoder else 224
    parts.feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    prior, decoder = parts.diffusers_pipelines()
    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-") as tmp:
        for pipe, target in ((prior, targets[0]), (decoder, targets[1])):
            staging = Path(tmp) / target.name
            pipe.save_pretrained(staging)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
    return out
