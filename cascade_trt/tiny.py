"""Write a random Stable Cascade in diffusers format, laid out as the hub checkpoints are.

`make_pipelines(out)` writes `out/prior` (a `StableCascadePriorPipeline`, with image encoder) and
`out/decoder` (a `StableCascadeDecoderPipeline`), each through diffusers' own `save_pretrained`, with the
offline tokenizer. The default configuration is the `tiny` preset (a few MB, for tests); any preset works.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cascade_trt.artifacts import check_output_dir, staging_dir, sync, sync_tree, write_errors
from cascade_trt.configs import TINY, CascadeConfig
from cascade_trt.errors import ConfigError
from cascade_trt.random_weights import random_components


def make_pipelines(
    out: str | Path, config: CascadeConfig = TINY, *, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write `out/prior` and `out/decoder`; returns `out`.

    All or nothing: both pipelines are written in staging directories beside their final names and renamed into
    place only once both are complete, so a failure (a full disk, say) leaves `out` as it was, and removes it
    when this call made it.
    """
    from transformers import CLIPImageProcessor

    out = check_output_dir(out, "make-tiny DIR")
    targets = [out / "prior", out / "decoder"]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} already exists: choose another directory, or overwrite it (--overwrite, overwrite=True)"
        )
    stages = ("text_encoder", "image_encoder", "stage_c", "stage_b", "stage_a")
    parts = random_components(config, stages=stages, seed=seed)
    size = config.image_encoder.image_size if config.image_encoder else 224
    parts.feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    pipelines = parts.diffusers_pipelines()
    with (
        write_errors(out),
        _made_dirs(out),
        staging_dir(targets[0]) as prior_dir,
        staging_dir(targets[1]) as decoder_dir,
    ):
        stagings = (prior_dir, decoder_dir)
        for pipe, staging in zip(pipelines, stagings, strict=True):
            pipe.save_pretrained(staging / "new")
            sync_tree(staging / "new")
        for staging, target in zip(stagings, targets, strict=True):
            if target.exists():
                target.rename(staging / "old")  # goes with the staging directory
            (staging / "new").rename(target)
        sync(out)
    return out


@contextlib.contextmanager
def _made_dirs(directory: Path) -> Iterator[None]:
    """Make `directory` (and missing parents); when the block fails, remove those this call made, if empty."""
    made = []
    missing = directory
    while not missing.exists():
        made.append(missing)
        missing = missing.parent
    directory.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in made:  # deepest first
            with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                os.rmdir(path)
        raise
