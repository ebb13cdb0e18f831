"""The HTTP API's request and response, OpenAI's Images API plus the cascade's own fields.

    POST /v1/images/generations  {"prompt": "a cat", "n": 2, "size": "1024x1024", "seed": 7}
    -> {"created": 1764547200, "data": [{"b64_json": "<PNG>", "seed": 7}, {"b64_json": "...", "seed": 8}],
        "batch_size": 4}

`ImageRequest` checks types and unknown fields (a field neither OpenAI's nor ours is refused, never ignored);
`check_limits` checks what this service was started with (sizes served, images per request). What a value
means to the model (steps at least 1, sizes the engines were built for...) is checked by the pipeline's own
`CascadePipeline.check_inputs`, in the model replica, before the request joins a batch: `pipeline_field` maps
the argument a pipeline error names (its `argument`) to the request field. Every refusal is a `RequestError`: HTTP status, field, message,
rendered in OpenAI's error shape by `error_body`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cascade_trt.errors import CascadeError, ConfigError
from cascade_trt.serve.config import ServeConfig, format_size, parse_size

MAX_PROMPT_CHARS = 4000  # OpenAI's own bound; CLIP reads 77 tokens of it anyway
MAX_STEPS = 200  # per stage; a request's cost is bounded before --timeout has to stop it
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes up to 2**64 - 1: seed + image index stays in range


class RequestError(ConfigError):
    """A request the service refuses: `status` (400, 401, 413...), the request `field` it is about (None for
    the whole body) and a message that says what is allowed."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.status = field, status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.field, self.status))  # crosses Ray's process boundary intact


class ImageRequest(BaseModel):
    """`POST /v1/images/generations`. OpenAI's fields `model`, `quality`, `style` and `user` are accepted
    (clients send them) and do not change the image: the service runs the one cascade it was started with."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    n: int = 1
    size: str | None = None  # default: the first size the service was started with
    response_format: Literal["b64_json"] = "b64_json"
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)  # None: a random one, returned in the answer
    prior_num_inference_steps: int = Field(default=20, le=MAX_STEPS)
    prior_guidance_scale: float = Field(default=4.0, allow_inf_nan=False)
    num_inference_steps: int = Field(default=10, le=MAX_STEPS)
    decoder_guidance_scale: float = Field(default=0.0, allow_inf_nan=False)
    # OpenAI's, accepted and not used:
    model: str | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None


class ImageData(BaseModel):
    b64_json: str
    seed: int


class ImageResponse(BaseModel):
    created: int
    data: list[ImageData]
    batch_size: int  # images in the pipeline call that made these (this request's and others')


def check_limits(request: ImageRequest, config: ServeConfig) -> tuple[int, int]:
    """The service's own limits; returns the (width, height) to run."""
    served = ", ".join(format_size(s) for s in config.sizes)
    size = config.sizes[0] if request.size is None else _served_size(request.size, config, served)
    if not 1 <= request.n <= config.max_batch:
        raise RequestError(
            f"n={request.n}: this service makes 1 to {config.max_batch} images per request (--max-batch)", "n"
        )
    return size


def _served_size(text: str, config: ServeConfig, served: str) -> tuple[int, int]:
    try:
        size = parse_size(text)
    except ConfigError:
        raise RequestError(f"size {text!r} is not WIDTHxHEIGHT: choose one of {served}", "size") from None
    if size not in config.sizes:
        raise RequestError(f"size {text!r} is not served here: choose one of {served}", "size")
    return size


# The pipeline's arguments a request sets, and the request field each comes from.
_PIPELINE_FIELDS = {
    "negative_prompt": "negative_prompt",
    "prompt": "prompt",
    "height": "size",
    "width": "size",
    "num_images_per_prompt": "n",
    "generator": "seed",
    "prior_num_inference_steps": "prior_num_inference_steps",
    "prior_guidance_scale": "prior_guidance_scale",
    "num_inference_steps": "num_inference_steps",
    "decoder_guidance_scale": "decoder_guidance_scale",
}


def pipeline_field(error: CascadeError) -> str:
    """The request field a `CascadePipeline.check_inputs` error is about: the one its `argument` comes from.
    An error that names no argument a request sets (a shape an engine cannot run) is about the size: the
    batch is bounded by --max-batch, which the service checks against the engines when it starts."""
    return _PIPELINE_FIELDS.get(getattr(error, "argument", None) or "", "size")


def validation_error(errors: list[dict[str, Any]]) -> RequestError:
    """A pydantic (or FastAPI) validation error as one RequestError about its first field."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = loc[0] if loc else None
    if first.get("type") == "json_invalid":
        return RequestError('the body is not JSON: send a JSON object like {"prompt": "a cat"}')
    if field is None:
        return RequestError(f"the body must be a JSON object with a prompt: {first.get('msg')}")
    if first.get("type") == "extra_forbidden":
        allowed = ", ".join(ImageRequest.model_fields)
        return RequestError(f"unknown field {field!r}: the fields are {allowed}", field)
    return RequestError(f"{field}: {first.get('msg')} (got {first.get('input')!r})", field)


def error_body(error: RequestError | str, status: int | None = None) -> dict[str, Any]:
    """OpenAI's error shape: what its client raises from, and what people read."""
    if isinstance(error, RequestError):
        message, field, status = str(error), error.field, error.status
    else:
        message, field = error, None
    kind = "invalid_request_error" if status is not None and status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": field, "code": status}}
