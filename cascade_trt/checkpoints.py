"""Loading Stable Cascade components from diffusers-format checkpoints, and building them with random weights.

Components are loaded one by one, by subfolder, with diffusers' and transformers' own `from_pretrained`:
diffusers 0.42 can no longer load a Stable Cascade decoder *pipeline* (its model_index.json names
`PaellaVQModel`, which the pipeline loader does not resolve), but every component loads fine on its own.

Layouts (as on the hub, and as `save_pretrained` writes them):

    prior/      model_index.json  prior/  text_encoder/  tokenizer/  scheduler/  [image_encoder/  feature_extractor/]
    decoder/    model_index.json  decoder/  text_encoder/  tokenizer/  scheduler/  vqgan/

The hub repositories also hold the lite models in `prior_lite/` and `decoder_lite/`: pass
`prior_subfolder="prior_lite"` / `decoder_subfolder="decoder_lite"`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cascade_trt.artifacts import export_command, onnx_path, read_manifest
from cascade_trt.configs import CascadeConfig
from cascade_trt.errors import ArtifactMismatchError, CheckpointError

Kind = Literal["prior", "decoder"]

PIPELINE_CLASSES = {"prior": "StableCascadePriorPipeline", "decoder": "StableCascadeDecoderPipeline"}
# Subfolders a pipeline directory must have, beyond the UNet's own.
REQUIRED = {"prior": ("text_encoder", "tokenizer"), "decoder": ("vqgan",)}
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


@dataclass
class CascadeComponents:
    """The modules of one cascade. Any may be None when it was not asked for."""

    config: CascadeConfig
    tokenizer: Any = None
    text_encoder: torch.nn.Module | None = None
    image_encoder: torch.nn.Module | None = None
    feature_extractor: Any = None
    stage_c: torch.nn.Module | None = None
    stage_b: torch.nn.Module | None = None
    stage_a: torch.nn.Module | None = None

    def diffusers_pipelines(self) -> tuple[Any, Any]:
        """diffusers' `StableCascadePriorPipeline` and `StableCascadeDecoderPipeline` over these very modules
        (shared, not copied), with default schedulers: what `save_pretrained` writes and the baseline runs."""
        from diffusers import (
            DDPMWuerstchenScheduler,
            StableCascadeDecoderPipeline,
            StableCascadePriorPipeline,
        )

        prior = StableCascadePriorPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            prior=self.stage_c,
            scheduler=DDPMWuerstchenScheduler(),
            resolution_multiple=self.config.resolution_multiple,
            feature_extractor=self.feature_extractor if self.image_encoder is not None else None,
            image_encoder=self.image_encoder,
        )
        decoder = StableCascadeDecoderPipeline(
            decoder=self.stage_b,
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            scheduler=DDPMWuerstchenScheduler(),
            vqgan=self.stage_a,
            latent_dim_scale=self.config.latent_dim_scale,
        )
        return prior, decoder


def resolve_pipeline_dir(path_or_id: str | Path, kind: Kind, *, subfolder: str | None = None) -> Path:
    """A local Stable Cascade pipeline directory for a path or a hub id, validated.

    A hub id is fetched with `huggingface_hub.snapshot_download` (cached; works offline once cached).
    """
    path = Path(path_or_id).expanduser()
    if not path.exists():
        if _looks_like_hub_id(str(path_or_id)):
            path = _download(str(path_or_id), kind)
        else:
            raise CheckpointError(
                f"{kind} checkpoint {str(path_or_id)!r} does not exist: pass a diffusers-format "
                f"{PIPELINE_CLASSES[kind]} directory or a hub id such as "
                f"{'stabilityai/stable-cascade-prior' if kind == 'prior' else 'stabilityai/stable-cascade'}"
            )
    if not path.is_dir():
        raise CheckpointError(f"{kind} checkpoint {str(path)!r} is a file, not a pipeline directory")
    _validate(path, kind, subfolder or kind)
    return path


def read_component_config(root: str | Path, subfolder: str, kind: Kind) -> dict[str, Any]:
    """config.json of one component; FileNotFoundError (a CheckpointError) naming the path when missing."""
    path = Path(root) / subfolder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: {root} is not a Stable Cascade {kind} directory with a {subfolder!r} component"
        )
    return json.loads(path.read_text())


def _validate(path: Path, kind: Kind, unet_subfolder: str) -> None:
    index = path / "model_index.json"
    if index.is_file():
        cls = json.loads(index.read_text()).get("_class_name", "")
        if cls != PIPELINE_CLASSES[kind]:
            other = next((k for k, v in PIPELINE_CLASSES.items() if v == cls), None)
            hint = (
                f" (that is a {other} pipeline: pass it as --{other}, and a {kind} pipeline as --{kind})"
                if other
                else ""
            )
            raise CheckpointError(
                f"{path} holds a {cls or 'pipeline of unknown class'}, not a {PIPELINE_CLASSES[kind]}{hint}"
            )
    unet = read_component_config(path, unet_subfolder, kind)
    if unet.get("_class_name") != "StableCascadeUNet":
        raise CheckpointError(
            f"{path / unet_subfolder} holds a {unet.get('_class_name')!r}, not a StableCascadeUNet: "
            f"not a Stable Cascade {kind}"
        )
    missing = [s for s in REQUIRED[kind] if not (path / s).is_dir()]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: not a complete Stable Cascade {kind} pipeline"
        )


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _download(repo_id: str, kind: Kind) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        raise CheckpointError(
            f"could not fetch {kind} checkpoint {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "Download it once with network access (huggingface-cli download), or pass a local directory."
        ) from exc


def load_components(
    prior: str | Path | None,
    decoder: str | Path | None,
    *,
    stages: tuple[str, ...] = ("text_encoder", "stage_c", "stage_b", "stage_a"),
    dtypes: dict[str, torch.dtype] | None = None,
    device: str | torch.device = "cpu",
    prior_subfolder: str = "prior",
    decoder_subfolder: str = "decoder",
) -> CascadeComponents:
    """Load the named stages. Each loads straight into its dtype (no fp32 copy of the model is ever held)."""
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    dtypes = dtypes or {}
    prior_dir = resolve_pipeline_dir(prior, "prior", subfolder=prior_subfolder) if prior is not None else None
    decoder_dir = (
        resolve_pipeline_dir(decoder, "decoder", subfolder=decoder_subfolder) if decoder is not None else None
    )
    owners = {"text_encoder": ("prior", prior_dir), "image_encoder": ("prior", prior_dir)}
    owners |= {
        "stage_c": ("prior", prior_dir),
        "stage_b": ("decoder", decoder_dir),
        "stage_a": ("decoder", decoder_dir),
    }
    for stage in stages:
        kind, directory = owners[stage]
        if directory is None:
            raise CheckpointError(f"loading {stage} needs the {kind} checkpoint: pass {kind}=...")
    config = None  # the architecture needs both halves; a half-loaded cascade has none
    if prior_dir is not None and decoder_dir is not None:
        config = CascadeConfig.from_pretrained(
            prior_dir, decoder_dir, prior_subfolder=prior_subfolder, decoder_subfolder=decoder_subfolder
        )

    def dt(stage: str) -> torch.dtype:
        return dtypes.get(stage, torch.float32)

    out = CascadeComponents(config=config)  # type: ignore[arg-type]
    if "text_encoder" in stages:
        out.tokenizer = CLIPTokenizer.from_pretrained(prior_dir, subfolder="tokenizer")
        out.text_encoder = CLIPTextModelWithProjection.from_pretrained(
            prior_dir, subfolder="text_encoder", dtype=dt("text_encoder")
        )
    if "image_encoder" in stages and (prior_dir / "image_encoder").is_dir():
        out.image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            prior_dir, subfolder="image_encoder", dtype=dt("image_encoder")
        )
        out.feature_extractor = CLIPImageProcessor.from_pretrained(prior_dir, subfolder="feature_extractor")
    if "stage_c" in stages:
        out.stage_c = StableCascadeUNet.from_pretrained(
            prior_dir, subfolder=prior_subfolder, torch_dtype=dt("stage_c")
        )
    if "stage_b" in stages:
        out.stage_b = StableCascadeUNet.from_pretrained(
            decoder_dir, subfolder=decoder_subfolder, torch_dtype=dt("stage_b")
        )
    if "stage_a" in stages:
        out.stage_a = PaellaVQModel.from_pretrained(decoder_dir, subfolder="vqgan", torch_dtype=dt("stage_a"))
    for name in ("text_encoder", "image_encoder", "stage_c", "stage_b", "stage_a"):
        module = getattr(out, name)
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    return out


# --- random weights --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _default_dtype_and_device(dtype: torch.dtype, device: str | torch.device) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


_FILL_CHUNK = 1 << 22  # values drawn at a time by `randomize_`: 16 MiB of fp32, whatever the parameter's size


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter with random values, in place, in its own dtype and device.

    diffusers initialises the UNets' output convolution (and timestep mappers) to zero, so a freshly built
    model predicts exactly zero: useless for parity tests. Matrices get std 1/sqrt(fan_in) (outputs keep unit
    scale through depth); vectors (biases, norms, layer scales) get small values around zero or one.

    Values are drawn in fp32 on the CPU from one seeded generator, so a model built in fp16 on a GPU holds the
    same weights (rounded) as the fp32 checkpoint that the ONNX export reads. They are drawn in chunks of
    `_FILL_CHUNK`, so the temporary stays small: building the full Stage C peaks at its weights plus the
    runtime (a whole-parameter temporary cost 0.35 GB more).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            mean, std = 0.0, 1.0 / math.sqrt(math.prod(p.shape[1:]))
        elif name.endswith("weight") and "norm" in name:
            mean, std = 1.0, 0.1
        else:
            mean, std = 0.0, 0.1
        flat = p.view(-1)  # parameters are contiguous: writes through the view land in the parameter
        for part in flat.split(_FILL_CHUNK):
            part.copy_(torch.randn(part.shape, generator=gen).mul_(std).add_(mean))
    return module


def random_components(
    config: CascadeConfig,
    *,
    stages: tuple[str, ...] = ("text_encoder", "stage_c", "stage_b", "stage_a"),
    dtypes: dict[str, torch.dtype] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> CascadeComponents:
    """The real architectures of `config` with random weights, built directly in each dtype on the device.

    Construction runs under the target default dtype and device, so a 3.6B bf16 Stage C never exists in fp32
    or on the host. Weights are filled by `randomize_`.
    """
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from cascade_trt.tokenizer import build_tokenizer

    dtypes = dtypes or {}
    out = CascadeComponents(config=config)

    def build(stage: str, factory) -> torch.nn.Module:
        with _default_dtype_and_device(dtypes.get(stage, torch.float32), device):
            module = factory()
        return randomize_(module.eval().requires_grad_(False), seed=seed + len(stage))

    if "text_encoder" in stages:
        te = CLIPTextConfig(**vars(config.text_encoder))
        out.tokenizer = build_tokenizer(config.text_encoder)
        out.text_encoder = build("text_encoder", lambda: CLIPTextModelWithProjection(te))
    if "image_encoder" in stages and config.image_encoder is not None:
        ie = CLIPVisionConfig(**vars(config.image_encoder))
        out.image_encoder = build("image_encoder", lambda: CLIPVisionModelWithProjection(ie))
    if "stage_c" in stages:
        out.stage_c = build("stage_c", lambda: StableCascadeUNet(**config.stage_c.to_diffusers()))
    if "stage_b" in stages:
        out.stage_b = build("stage_b", lambda: StableCascadeUNet(**config.stage_b.to_diffusers()))
    if "stage_a" in stages:
        out.stage_a = build("stage_a", lambda: PaellaVQModel(**config.stage_a.to_diffusers()))
    return out


def component_origin(
    stage: str,
    prior_dir: Path,
    decoder_dir: Path,
    *,
    prior_subfolder: str = "prior",
    decoder_subfolder: str = "decoder",
) -> tuple[Kind, Path, str]:
    """Where a stage's weights live: (pipeline kind, pipeline directory, subfolder)."""
    origins: dict[str, tuple[Kind, Path, str]] = {
        "text_encoder": ("prior", prior_dir, "text_encoder"),
        "image_encoder": ("prior", prior_dir, "image_encoder"),
        "stage_c": ("prior", prior_dir, prior_subfolder),
        "stage_b": ("decoder", decoder_dir, decoder_subfolder),
        "stage_a": ("decoder", decoder_dir, "vqgan"),
    }
    return origins[stage]


WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CHUNKS, _CHUNK = 64, 4096


def checkpoint_fingerprint(directory: str | Path) -> str | None:
    """A short fingerprint of the weight files in a component directory, without loading them (None: none).

    File names, sizes and 64 evenly spaced 4 KiB chunks of each: a few hundred KiB read from disk, where
    `weights_hash` must load the model. Two checkpoints with different weights (another seed, a fine-tune)
    differ all through their files, so the sample tells them apart; it is an identity check, not a checksum.
    """
    import hashlib

    files = sorted(p for p in Path(directory).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            for i in range(_CHUNKS):
                f.seek(size * i // _CHUNKS)
                h.update(f.read(_CHUNK))
    return h.hexdigest()[:16]


def check_exported_sources(
    onnx_dir: str | Path,
    stages: tuple[str, ...],
    prior_dir: Path,
    decoder_dir: Path,
    *,
    prior_subfolder: str = "prior",
    decoder_subfolder: str = "decoder",
) -> None:
    """Refuse ONNX models exported from other weights than the checkpoints the pipeline was given.

    Each export manifest records the fingerprint of the weight files it was traced from; a model whose
    fingerprint differs from the given checkpoint's would make images of another model under this one's name.
    Stages without a model or without a recorded fingerprint are left to the loader.
    """
    for stage in stages:
        path = onnx_path(onnx_dir, stage)
        manifest = read_manifest(path)
        recorded = (manifest or {}).get("source", {}).get("fingerprint")
        if recorded is None:
            continue
        kind, directory, subfolder = component_origin(
            stage,
            prior_dir,
            decoder_dir,
            prior_subfolder=prior_subfolder,
            decoder_subfolder=decoder_subfolder,
        )
        given = checkpoint_fingerprint(directory / subfolder)
        if given is not None and given != recorded:
            source = manifest["source"]
            raise ArtifactMismatchError(
                f"{path} was exported from other weights ({source.get('checkpoint')}, {source.get('subfolder')}) "
                f"than the {kind} given here ({directory}, {subfolder}): re-export it from this checkpoint with "
                f"{export_command(Path(onnx_dir), stage)}, or pass the checkpoint it was exported from"
            )


def weights_hash(module: torch.nn.Module) -> str:
    """A short content hash of a module's weights (names, shapes, dtypes and a strided sample of values).

    Hashing every byte of a 3.6B model costs minutes; names, shapes and 4096 evenly spaced values of each
    tensor identify a checkpoint for caching purposes in well under a second.
    """
    import hashlib

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].to("cpu", torch.float32).contiguous()
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
