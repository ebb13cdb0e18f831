"""The deployment path needs no diffusers: loading the pipelines for ONNX Runtime (or TensorRT) from exported
graphs plus the checkpoint directories, and generating with them, imports no `diffusers` module.

diffusers deprecated its Stable Cascade pipelines after 0.35.2; a deployment should not depend on code that is
no longer maintained. diffusers stays what the torch backend, export and random weights use (their extra).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

RUN = textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch
    from PIL import Image

    from cascade_trt import CascadeDecoderPipeline, CascadePipeline, CascadePriorPipeline

    prior_dir, decoder_dir, onnx_dir = sys.argv[1:4]
    load = dict(backend="onnxruntime", onnx_dir=onnx_dir, device="cpu")
    prior = CascadePriorPipeline.from_pretrained(prior_dir, **load)
    decoder = CascadeDecoderPipeline.from_pretrained(decoder_dir, **load)
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    for pipe in (prior, decoder):
        pipe.set_progress_bar_config(disable=True)
    effnet = prior("a cat", images=[image], height=128, width=128, num_inference_steps=2).image_embeddings
    images = decoder(effnet, prompt="a cat", num_inference_steps=2).images
    combined = CascadePipeline.from_pretrained(prior_dir, decoder_dir, **load)
    combined.set_progress_bar_config(disable=True)
    more = combined("a cat", height=128, width=128, prior_num_inference_steps=2, num_inference_steps=2).images
    assert images[0].size == more[0].size == (128, 128)
    loaded = sorted(name for name in sys.modules if name == "diffusers" or name.startswith("diffusers."))
    print("diffusers modules:", loaded)
    sys.exit(1 if loaded else 0)
    """
)


def test_onnxruntime_pipelines_load_and_generate_without_importing_diffusers(
    tiny_prior, tiny_decoder, tiny_onnx
):
    onnx_dir = tiny_onnx("fp32")["stage_a"].parent
    argv = [sys.executable, "-c", RUN, str(tiny_prior), str(tiny_decoder), str(onnx_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "diffusers modules: []" in done.stdout


def test_the_torch_backend_without_diffusers_says_what_to_install(tiny_prior):
    """diffusers is the torch backend's (an extra); where it is not installed, loading says so in one line."""
    run = textwrap.dedent(
        """
        import sys

        sys.modules["diffusers"] = None  # as if it were not installed: `import diffusers` raises

        from cascade_trt import CascadePriorPipeline
        from cascade_trt.errors import BackendUnavailableError

        try:
            CascadePriorPipeline.from_pretrained(sys.argv[1], device="cpu")
        except BackendUnavailableError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", run, str(tiny_prior)], capture_output=True, text=True, timeout=300
    )
    assert (
        "needs diffusers, which is not installed: pip install 'cascade-trt[torch-backend]'" in done.stdout
    ), done.stdout + done.stderr[-3000:]
