"""Stable Cascade checkpoints on disk: a prior and a decoder pipeline directory, located and validated once.

`CheckpointPair.resolve(prior, decoder)` turns paths or hub ids into validated local directories (a hub id is
fetched with `huggingface_hub.snapshot_download`: cached, and offline once cached). The pair is what every
loader takes: it knows where each stage's weights and config live (`location`), and reads the architecture
(`config`, config.json files only, no weights) and the schedulers' settings (`schedulers`). Weights are loaded
by `cascade_trt.components`, after `check_weight_files` has found each file whole (a truncated `.safetensors` is
named as such, not left to the loader's traceback). A JSON file that does not parse is a `CheckpointError`
naming it.

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
# Subfolders a pipeline directory must have, beyond the UNet's own.
REQUIRED = {"prior": ("text_encoder", "tokenizer"), "decoder": ("vqgan",)}
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# The pipeline and subfolder of each stage's component; None is the pipeline's UNet subfolder.
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
    """A prior and a decoder pipeline directory, and the subfolders of their UNets. Validated when made."""

    prior: Path
    decoder: Path
    prior_subfolder: str = "prior"
    decoder_subfolder: str = "decoder"
    # The checkpoints as the user gave them (hub ids or paths), for manifests and names; the paths by default.
    prior_name: str = field(default="", compare=False)
    decoder_name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for kind in ("prior", "decoder"):
            path = Path(getattr(self, kind)).expanduser()
            object.__setattr__(self, kind, path)
            object.__setattr__(self, f"{kind}_name", getattr(self, f"{kind}_name") or str(path))
            _validate(path, kind, getattr(self, f"{kind}_subfolder"))

    @classmethod
    def resolve(
        cls,
        prior: str | Path,
        decoder: str | Path,
        *,
        prior_subfolder: str = "prior",
        decoder_subfolder: str = "decoder",
    ) -> CheckpointPair:
        """The pair for two paths or hub ids, fetched and validated."""
        return cls(
            _local_dir(prior, "prior"),
            _local_dir(decoder, "decoder"),
            prior_subfolder,
            decoder_subfolder,
            prior_name=str(prior),
            decoder_name=str(decoder),
        )

    def location(self, stage: str) -> Location:
        """Where `stage`'s weights and config.json live."""
        if stage not in COMPONENTS:
            raise ConfigError(f"unknown stage {stage!r}: choose from {', '.join(COMPONENTS)}")
        kind, subfolder = COMPONENTS[stage]
        if kind == "prior":
            return Location(kind, self.prior, subfolder or self.prior_subfolder, self.prior_name)
        return Location(kind, self.decoder, subfolder or self.decoder_subfolder, self.decoder_name)

    def config(self) -> CascadeConfig:
        """The architecture, from the config.json files (no weights), named after the two checkpoints."""
        image_encoder = self.location("image_encoder")
        return CascadeConfig.from_diffusers(
            f"{Path(self.prior_name).name}+{Path(self.decoder_name).name}",
            text_encoder=self.location("text_encoder").read_config(),
            stage_c=self.location("stage_c").read_config(),
            stage_b=self.location("stage_b").read_config(),
            stage_a=self.location("stage_a").read_config(),
            image_encoder=image_encoder.read_config() if image_encoder.exists() else None,
            prior_index=_model_index(self.prior),
            decoder_index=_model_index(self.decoder),
        )

    def schedulers(self) -> dict[str, SchedulerConfig]:
        """The scheduler settings of each denoising stage (diffusers' defaults where a pipeline has none)."""
        return {
            "stage_c": SchedulerConfig.from_pretrained(self.prior),
            "stage_b": SchedulerConfig.from_pretrained(self.decoder),
        }


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


def _validate(path: Path, kind: Kind, unet_subfolder: str) -> None:
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
    missing = [s for s in REQUIRED[kind] if not (path / s).is_dir()]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: not a complete Stable Cascade {kind} pipeline"
        )


def _model_index(directory: Path) -> dict[str, Any]:
    path = directory / "model_index.json"
    return read_json(path) if path.is_file() else {}


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
