"""Stable Cascade checkpoints on disk: a prior and a decoder pipeline directory, located and validated once.

`CheckpointPair.resolve(prior, decoder)` turns paths or hub ids into validated local directories (a hub id is
fetched with `huggingface_hub.snapshot_download`: cached, and offline once cached). The pair is what every
loader takes: it knows where each stage's weights and config live (`location`), and reads the architecture
(`config`, config.json files only, no weights) and the schedulers' settings (`schedulers`). Weights are loaded
by `cascade_trt.components`, after `check_weight_files` has found each file whole (a truncated `.safetensors` is
named as such, not left to the loader's traceback). A JSON file that does not parse is a `CheckpointError`
naming it.

Either side may be left out (`CheckpointPair.resolve(prior=P)`, `resolve(decoder=D)`): what the prior and the
decoder pipelines load. The text encoder (and tokenizer) is then that side's own: a decoder alone encodes
prompts with its own `text_encoder/`, as diffusers' decoder pipeline does; with both sides given, the prior's
serves both, as in diffusers' combined pipeline.

Layouts (as on the hub, and as `save_pretrained` writes them):

    prior/      model_index.json  prior/  text_encoder/  tokenizer/  scheduler/  [image_encoder/  feature_extractor/]
    decoder/    model_index.json  decoder/  text_encoder/  tokenizer/  scheduler/  vqgan/

The hub repositories also hold the lite models in `prior_lite/` and `decoder_lite/`: pass
`prior_subfolder="prior_lite"` / `decoder_subfolder="decoder_lite"`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cascade_trt.configs import CascadeConfig
from cascade_trt.errors import CheckpointError, ConfigError
from cascade_trt.scheduler import SchedulerConfig

Kind = Literal["prior", "decoder"]

PIPELINE_CLASSES = {"prior": "StableCascadePriorPipeline", "decoder": "StableCascadeDecoderPipeline"}
HUB_IDS = {"prior": "stabilityai/stable-cascade-prior", "decoder": "stabilityai/stable-cascade"}
# Subfolders a pipeline directory must have, beyond the UNet's own (a decoder alone: its text encoder too).
REQUIRED = {"prior": ("text_encoder", "tokenizer"), "decoder": ("vqgan",)}
TEXT = ("text_encoder", "tokenizer")
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# The pipeline and subfolder of each stage's component; None is the pipeline's UNet subfolder. The text encoder
# is the prior's when there is a prior, else the decoder's own (`CheckpointPair.location`).
COMPONENTS: dict[str, tuple[Kind, str | None]] = {
    "text_encoder": ("prior", "text_encoder"),
    "image_encoder": ("prior", "image_encoder"),
    "stage_c": ("prior", None),
    "stage_b": ("decoder", None),
    "stage_a": ("decoder", "vqgan"),
}


@dataclass(frozen=True)
class Location:
    """Where one component lives: the pipeline directory it belongs to, and its subfolder there."""

    kind: Kind
    root: Path
    subfolder: str
    name: str  # the pipeline as the user gave it: a hub id, or the path as passed

    @property
    def path(self) -> Path:
        return self.root / self.subfolder

    def exists(self) -> bool:
        return self.path.is_dir()

    def read_config(self) -> dict[str, Any]:
        """The component's config.json; a CheckpointError naming the path when it is missing."""
        path = self.path / "config.json"
        if not path.is_file():
            raise CheckpointError(
                f"{path} not found: {self.root} is not a Stable Cascade {self.kind} directory with a "
                f"{self.subfolder!r} component"
            )
        return read_json(path)


@dataclass(frozen=True)
class CheckpointPair:
    """A prior and a decoder pipeline directory (either may be None: one side alone), and the subfolders of
    their UNets. Validated when made."""

    prior: Path | None
    decoder: Path | None
    prior_subfolder: str = "prior"
    decoder_subfolder: str = "decoder"
    # The checkpoints as the user gave them (hub ids or paths), for manifests and names; the paths by default.
    prior_name: str = field(default="", compare=False)
    decoder_name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.prior is None and self.decoder is None:
            raise ConfigError("no checkpoint given: pass a prior, a decoder, or both")
        for kind in self.kinds:
            path = Path(getattr(self, kind)).expanduser()
            object.__setattr__(self, kind, path)
            object.__setattr__(self, f"{kind}_name", getattr(self, f"{kind}_name") or str(path))
            _validate(path, kind, getattr(self, f"{kind}_subfolder"), own_text=self.prior is None)

    @classmethod
    def resolve(
        cls,
        prior: str | Path | None = None,
        decoder: str | Path | None = None,
        *,
        prior_subfolder: str = "prior",
        decoder_subfolder: str = "decoder",
    ) -> CheckpointPair:
        """The pair (or one side) for paths or hub ids, fetched and validated."""
        return cls(
            _local_dir(prior, "prior") if prior is not None else None,
            _local_dir(decoder, "decoder") if decoder is not None else None,
            prior_subfolder,
            decoder_subfolder,
            prior_name=str(prior) if prior is not None else "",
            decoder_name=str(decoder) if decoder is not None else "",
        )

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """The sides given: ("prior", "decoder"), ("prior",) or ("decoder",)."""
        return tuple(kind for kind in ("prior", "decoder") if getattr(self, kind) is not None)  # type: ignore[misc]

    def has(self, stage: str) -> bool:
        """Whether the sides given hold `stage` (every side has a text encoder; a prior may lack the image
        encoder)."""
        if stage == "text_encoder":
            return True
        kind = COMPONENTS[stage][0]
        return kind in self.kinds and (stage != "image_encoder" or self.location(stage).exists())

    def location(self, stage: str) -> Location:
        """Where `stage`'s weights and config.json live (the text encoder: the prior's, or a decoder's own)."""
        if stage not in COMPONENTS:
            raise ConfigError(f"unknown stage {stage!r}: choose from {', '.join(COMPONENTS)}")
        kind, subfolder = COMPONENTS[stage]
        if stage == "text_encoder" and self.prior is None:
            kind = "decoder"
        if kind not in self.kinds:
            raise ConfigError(
                f"{stage} belongs to the {kind}, which was not given: pass the {kind} checkpoint"
            )
        if kind == "prior":
            assert self.prior is not None
            return Location(kind, self.prior, subfolder or self.prior_subfolder, self.prior_name)
        assert self.decoder is not None
        return Location(kind, self.decoder, subfolder or self.decoder_subfolder, self.decoder_name)

    def config(self) -> CascadeConfig:
        """The architecture, from the config.json files (no weights), named after the checkpoints given; the
        parts of a side not given are None."""

        def read(stage: str) -> dict[str, Any] | None:
            return self.location(stage).read_config() if self.has(stage) else None

        return CascadeConfig.from_diffusers(
            "+".join(Path(getattr(self, f"{kind}_name")).name for kind in self.kinds),
            text_encoder=self.location("text_encoder").read_config(),
            stage_c=read("stage_c"),
            stage_b=read("stage_b"),
            stage_a=read("stage_a"),
            image_encoder=read("image_encoder"),
            prior_index=_model_index(self.prior) if self.prior is not None else None,
            decoder_index=_model_index(self.decoder) if self.decoder is not None else None,
        )

    def schedulers(self) -> dict[str, SchedulerConfig]:
        """The scheduler settings of each denoising stage given (diffusers' defaults where a pipeline has none)."""
        stages = {"prior": "stage_c", "decoder": "stage_b"}
        return {stages[kind]: scheduler_config(getattr(self, kind)) for kind in self.kinds}


def _local_dir(given: str | Path, kind: Kind) -> Path:
    path = Path(given).expanduser()
    if path.exists():
        return path
    if _looks_like_hub_id(str(given)):
        return _download(str(given), kind)
    raise CheckpointError(
        f"{kind} checkpoint {str(given)!r} does not exist: pass a diffusers-format {PIPELINE_CLASSES[kind]} "
        f"directory or a hub id such as {HUB_IDS[kind]}"
    )


def _validate(path: Path, kind: Kind, unet_subfolder: str, *, own_text: bool = False) -> None:
    if not path.is_dir():
        raise CheckpointError(f"{kind} checkpoint {str(path)!r} is a file, not a pipeline directory")
    index = path / "model_index.json"
    # Without a model_index.json there is no class to contradict the kind.
    cls = read_json(index).get("_class_name", "") if index.is_file() else PIPELINE_CLASSES[kind]
    if cls != PIPELINE_CLASSES[kind]:
        other = next((k for k, v in PIPELINE_CLASSES.items() if v == cls), None)
        hint = f" (that is a {other} pipeline: pass it as --{other}, and a {kind} pipeline as --{kind})"
        raise CheckpointError(
            f"{path} holds a {cls or 'pipeline of unknown class'}, not a {PIPELINE_CLASSES[kind]}"
            + (hint if other else "")
        )
    unet = Location(kind, path, unet_subfolder, str(path)).read_config()
    if unet.get("_class_name") != "StableCascadeUNet":
        raise CheckpointError(
            f"{path / unet_subfolder} holds a {unet.get('_class_name')!r}, not a StableCascadeUNet: "
            f"not a Stable Cascade {kind}"
        )
    required = REQUIRED[kind] + (TEXT if own_text and kind == "decoder" else ())
    missing = [s for s in required if not (path / s).is_dir()]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: not a complete Stable Cascade {kind} pipeline"
        )


def _model_index(directory: Path) -> dict[str, Any]:
    path = directory / "model_index.json"
    return read_json(path) if path.is_file() else {}


def scheduler_config(pipeline_dir: str | Path) -> SchedulerConfig:
    """A pipeline directory's `scheduler/scheduler_config.json`; diffusers' defaults when it has none."""
    path = Path(pipeline_dir) / "scheduler" / "scheduler_config.json"
    return SchedulerConfig.from_dict(read_json(path)) if path.is_file() else SchedulerConfig()


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file; a CheckpointError naming it when it does not parse (or is not an object)."""
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:  # json's decode error, or bytes that are not text
        raise CheckpointError(f"{path} is not valid JSON ({exc}): {_DAMAGED}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object: {_DAMAGED}")
    return data


def weight_files(directory: str | Path) -> list[Path]:
    """The weight files of a component directory, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def check_weight_files(location: Location) -> None:
    """A CheckpointError naming the first `.safetensors` file of `location` that is not whole: shorter than its
    header says (a copy or download cut off) or with a header that does not parse. Reads the headers only."""
    for path in weight_files(location.path):
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
            if problem is not None:
                raise CheckpointError(f"{path} {problem}: {_DAMAGED}")


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """The shape of every tensor in a `.safetensors` file, from its header (no weights read)."""
    return {
        name: entry["shape"] for name, entry in _safetensors_header(path)[1].items() if name != "__metadata__"
    }


def _safetensors_problem(path: Path) -> str | None:
    try:
        length, header = _safetensors_header(path)
        data = max((e["data_offsets"][1] for n, e in header.items() if n != "__metadata__"), default=0)
    except (ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
        return f"has no valid safetensors header ({type(exc).__name__}: {exc})"
    size, end = path.stat().st_size, 8 + length + data
    return f"is truncated: {size:,} bytes where its header says {end:,}" if size < end else None


def _safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(length, header) of a `.safetensors` file, which starts with an 8-byte little-endian length and then
    that many bytes of JSON."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 << 20:  # the format caps headers at 100 MB: these are not a header's first bytes
            raise ValueError(f"header length {length:,} is beyond the format's limit")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise TypeError(f"the header is a JSON {type(header).__name__}")
    return length, header


# How to get a whole checkpoint back, whichever of its files is damaged.
_DAMAGED = "the checkpoint is damaged (a copy or download that did not finish?): fetch or copy it again"


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
