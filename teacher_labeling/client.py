"""The OpenAI-compatible client layer under the teachers, the evaluate endpoint and the judge.

One typed config of "a model behind an OpenAI-compatible endpoint" (`EndpointSettings`:
where, which key variable, how hard it may be pushed, how images are sent), one builder of
its request engine (`build_engine`), one readiness check (`check_ready`) and one image
encoding (`image_part`, cached by pixel hash in `ENCODED_IMAGES`). `TeacherConfig`,
`EndpointConfig` and the judge's `JudgeEndpointConfig` extend `EndpointSettings` with the
keys only they use (the teacher and the judge, both asked for JSON, through `AnsweringSettings`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from toolkit.images import marked_source

if TYPE_CHECKING:
    from teacher_labeling.engine import RequestEngine


class EndpointSettings(BaseModel):
    """A model behind an OpenAI-compatible endpoint: where, its key variable, its limits."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Free name, used in messages and recorded as the source")
    base_url: str | list[str] | None = Field(
        None,
        description="OpenAI-compatible base URL; omit for OpenAI. A list: replicas serving the "
        "same model (e.g. several vLLM servers), sharing the limits below and one cache (keys "
        "name the first URL); each request goes to the least busy one, and one that stops "
        "answering is left out until it is back",
    )
    model: str = Field(description="Model name sent to the endpoint")
    api_key_env: str | None = Field(
        None, description="NAME of the environment variable holding the key (never the key)"
    )
    max_concurrency: int = Field(32, ge=1, description="Requests in flight at once")
    requests_per_minute: int = Field(600, ge=1, description="Request rate limit")
    tokens_per_minute: int = Field(2_000_000, ge=1, description="Token rate limit")
    timeout_s: float = Field(120, gt=0, description="Per-request timeout in seconds")
    startup_wait_s: float = Field(
        0,
        ge=0,
        description="Seconds to wait for the server to answer before the first request (a "
        "vLLM still loading its model); 0 = a dead URL fails at once",
    )
    max_retries: int = Field(6, ge=0, description="Retries of 429/5xx/timeouts before giving up")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature")
    max_tokens: int = Field(2048, ge=1, description="Answer length limit in tokens")
    image_format: Literal["jpeg", "png"] = Field(
        "jpeg",
        description="Encoding of the images sent: jpeg (small requests, what APIs price) or png "
        "(lossless: the exact pixels, for a student served by vLLM)",
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the images sent")

    @field_validator("base_url", mode="before")
    @classmethod
    def _one_url_or_replicas(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
            raise ValueError("must be a URL, or a list of the URLs of replicas of one model")
        if not value:
            raise ValueError("lists no URL: give one or more, or omit base_url for OpenAI")
        spelled = [u.rstrip("/") for u in value]
        repeated = sorted({u for u in spelled if spelled.count(u) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return value

    @property
    def base_urls(self) -> list[str | None]:
        """The endpoint's replicas: base_url as a list ([None]: the OpenAI API)."""
        return list(self.base_url) if isinstance(self.base_url, list) else [self.base_url]

    @property
    def endpoint_url(self) -> str | None:
        """The URL naming the endpoint in cache keys: the first replica's, whichever answers."""
        return self.base_urls[0]

    @model_validator(mode="after")
    def _no_inline_keys(self) -> EndpointSettings:
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                "not the key itself"
            )
        return self


class AnsweringSettings(EndpointSettings):
    """An endpoint asked for a JSON answer (a teacher, the judge): its answer format and size."""

    structured_output: bool = Field(
        True,
        description="Send the answer's keys as a strict json_schema response_format (OpenAI "
        "structured outputs; vLLM guided decoding): a teacher's attribute schema, the judge's "
        "claim keys. Off for servers without it.",
    )
    expected_output_tokens: int | None = Field(
        None,
        ge=1,
        description="Answer tokens assumed by --dry-run and the token rate limit (default: "
        "teachers 400 attributes, 300 boxes; the judge 16 per claim + 16)",
    )


# How an image is sent: ("jpeg", quality) or ("png", 0).
Encoding = tuple[str, int]


def encoding_of(config: EndpointSettings) -> Encoding:
    """How an endpoint config sends its images: ("jpeg", quality) or ("png", 0)."""
    return ("png", 0) if config.image_format == "png" else ("jpeg", config.jpeg_quality)


def encode_data_url(image: Image.Image, encoding: Encoding) -> str:
    """An image's data URL in an encoding: JPEG (4:4:4, at its quality) or lossless PNG."""
    import base64

    from toolkit.images import encode_jpeg, encode_png

    image_format, quality = encoding
    data = encode_png(image) if image_format == "png" else encode_jpeg(image, quality)
    return f"data:image/{image_format};base64,{base64.b64encode(data).decode('ascii')}"


class EncodedImage(Image.Image):
    """An image as sent, encoded in another process: its size and data URL, without pixels.

    A request's images may be these (labeling encodes in worker processes); `image_part`
    sends the URL. Reading the pixels is an error: they were never decoded here.
    """

    def __init__(self, size: tuple[int, int], data_url: str, encoding: Encoding) -> None:
        super().__init__()
        self._size = size
        self._mode = "RGB"
        self.data_url = data_url
        self.encoding = encoding

    def load(self) -> NoReturn:
        """Refuse: the pixels live only in the data URL."""
        raise TypeError(
            f"an image encoded elsewhere ({self.width}x{self.height}, {self.encoding[0]}) has "
            "no pixels in this process, only its data URL"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pillow pickles an image's pixels; this one travels as its URL.
        return (EncodedImage, (self._size, self.data_url, self.encoding))


class EncodedImages:
    """Data URLs by (pixel hash, size, encoding), shared by a process's clients.

    Each image is encoded once per size it is sent at. Labeling looks a URL up (`get`)
    before it decodes anything, so a hit saves the decode and the resize too, and keeps
    what its workers encoded (`put`). The oldest entries go first once the cache holds
    max_bytes (items flow through once, so a small cache is enough).
    """

    def __init__(self, max_bytes: int = 256_000_000) -> None:
        self._cache: dict[tuple[str, tuple[int, int], Encoding], str] = {}
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self.encoded = 0  # data URLs made (a hit makes none)

    def get(self, image_hash: str, size: tuple[int, int], encoding: Encoding) -> str | None:
        """The data URL of the image with that pixel hash at that size, if encoded already."""
        with self._lock:
            return self._cache.get((image_hash, (size[0], size[1]), encoding))

    def put(self, image_hash: str, size: tuple[int, int], encoding: Encoding, url: str) -> None:
        """Keep a data URL just made (counted in `encoded`)."""
        with self._lock:
            self.encoded += 1
            key = (image_hash, (size[0], size[1]), encoding)
            if key in self._cache:
                return
            self._cache[key] = url
            self._bytes += len(url)
            while self._bytes > self._max_bytes and len(self._cache) > 1:
                oldest = next(iter(self._cache))
                self._bytes -= len(self._cache.pop(oldest))

    def data_url(self, image: Image.Image, image_hash: str, config: EndpointSettings) -> str:
        """The data URL of an image as an endpoint config sends it: JPEG, or lossless (PNG, or
        the image's own file when it decodes to exactly its pixels: toolkit.images.marked_source)."""
        encoding = encoding_of(config)
        if isinstance(image, EncodedImage) and image.encoding == encoding:
            return image.data_url
        if encoding[0] == "png":
            # Lossless asked: a file that decodes to exactly these pixels goes as it is
            # (a JPEG photo: a fifth of the PNG's bytes, and no encoding).
            source = marked_source(image, image_hash)
            if source is not None:
                return source.data_url()
        url = self.get(image_hash, image.size, encoding)
        if url is None:
            url = encode_data_url(image, encoding)
            self.put(image_hash, image.size, encoding, url)
        return url


ENCODED_IMAGES = EncodedImages()


def image_part(
    image: Image.Image,
    image_hash: str,
    config: EndpointSettings,
    encoded: EncodedImages = ENCODED_IMAGES,
) -> dict[str, Any]:
    """One image as a chat message content part (a data URL, encoded once per size)."""
    return {"type": "image_url", "image_url": {"url": encoded.data_url(image, image_hash, config)}}


def user_message(
    images: Sequence[Image.Image],
    hashes: Sequence[str],
    text: str,
    config: EndpointSettings,
    encoded: EncodedImages = ENCODED_IMAGES,
) -> list[dict[str, Any]]:
    """The chat messages of one question: its images as data URLs, then the instruction."""
    content = [
        image_part(image, h, config, encoded) for image, h in zip(images, hashes, strict=True)
    ]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def check_ready(what: str, config: EndpointSettings) -> None:
    """The key variable is set, the server answers and it serves config.model (CroptuneError)."""
    from teacher_labeling.engine import check_endpoints, resolve_api_key

    key = resolve_api_key(config.name, config.api_key_env, config.base_url)
    check_endpoints(
        what,
        config.base_urls,
        config.model,
        key,
        timeout_s=min(config.timeout_s, 30.0),
        wait_s=config.startup_wait_s,
        key_env=config.api_key_env,
    )


def build_engine(
    config: EndpointSettings,
    client: Any = None,
    wrap: Callable[[Any], Any] | None = None,
) -> RequestEngine:
    """The request engine of an endpoint config (call inside the event loop that uses it).

    client: an AsyncOpenAI-like client (or a list, one per replica) to use (tests); default
    one per base_url, its key read from the variable the config names. wrap: applied to
    each client first.
    """
    from teacher_labeling.engine import RequestEngine, client_url, openai_client, resolve_api_key

    if client is None:
        key = resolve_api_key(config.name, config.api_key_env, config.base_url)
        clients = [openai_client(url, key, config.timeout_s) for url in config.base_urls]
        urls = config.base_urls
    else:
        clients = list(client) if isinstance(client, list) else [client]
        urls = [client_url(c) for c in clients]
    return RequestEngine(
        config.name,
        config.model,
        [wrap(c) for c in clients] if wrap is not None else clients,
        urls=urls,
        max_concurrency=config.max_concurrency,
        requests_per_minute=config.requests_per_minute,
        tokens_per_minute=config.tokens_per_minute,
        max_retries=config.max_retries,
    )
