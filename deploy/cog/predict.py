"""A cog predictor (Replicate): the HTTP API's inputs, one pipeline loaded once in `setup()`.

The same `ImageWorker` as the Ray service does the work, so a prediction validates, seeds and makes its images
exactly as `POST /v1/images/generations` does: image i of seed s is `torch.Generator().manual_seed(s + i)`.
What to load comes from the environment, one variable per `ServeConfig` field (`CASCADE_TRT_PRIOR`,
`CASCADE_TRT_DECODER`, `CASCADE_TRT_BACKEND`, `CASCADE_TRT_ENGINE_DIR`, `CASCADE_TRT_SIZES`,
`CASCADE_TRT_MAX_BATCH`...), set in cog.yaml.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import fields

from cog import BasePredictor, Input, Path

from cascade_trt.serve.config import ServeConfig
from cascade_trt.serve.schema import MAX_SEED, MAX_STEPS, ImageRequest
from cascade_trt.serve.worker import ImageWorker

ENV_PREFIX = "CASCADE_TRT_"


def _env_args() -> dict[str, str]:
    """`ServeConfig.from_mapping` arguments from the CASCADE_TRT_* variables that are set."""
    names = {ENV_PREFIX + f.name.upper(): f.name for f in fields(ServeConfig)}
    return {name: os.environ[var] for var, name in names.items() if os.environ.get(var)}


class Predictor(BasePredictor):
    def setup(self) -> None:
        """Load the pipeline (engines or ONNX models with their backend) and warm every served size up."""
        self.worker = ImageWorker.load(ServeConfig.from_mapping(_env_args()))

    def predict(
        self,
        prompt: str = Input(description="what to draw"),
        n: int = Input(description="images", default=1, ge=1),
        size: str = Input(
            description="WIDTHxHEIGHT, one of the served sizes (default: the first)", default=None
        ),
        negative_prompt: str = Input(description="what not to draw", default=""),
        seed: int = Input(
            description="image i uses seed + i (default: random)", default=None, ge=0, le=MAX_SEED
        ),
        prior_num_inference_steps: int = Input(description="Stage C steps", default=20, ge=1, le=MAX_STEPS),
        prior_guidance_scale: float = Input(description="Stage C guidance (on above 1)", default=4.0),
        num_inference_steps: int = Input(description="Stage B steps", default=10, ge=1, le=MAX_STEPS),
        decoder_guidance_scale: float = Input(description="Stage B guidance (on above 1)", default=0.0),
    ) -> list[Path]:
        request = ImageRequest(
            prompt=prompt,
            n=n,
            size=size,
            negative_prompt=negative_prompt,
            seed=seed,
            prior_num_inference_steps=prior_num_inference_steps,
            prior_guidance_scale=prior_guidance_scale,
            num_inference_steps=num_inference_steps,
            decoder_guidance_scale=decoder_guidance_scale,
        )
        [result] = self.worker.run([self.worker.job(request)])
        if isinstance(result, Exception):
            raise result
        out = Path(tempfile.mkdtemp(prefix="cascade-"))
        paths = []
        for png, image_seed in zip(result.images, result.seeds, strict=True):
            path = out / f"seed-{image_seed}.png"
            path.write_bytes(png)
            paths.append(Path(path))
        return paths
