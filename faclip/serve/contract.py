"""The request and response models of the API, and the one-line error bodies: what /openapi.json states."""

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from faclip.errors import FaclipError
from faclip.vqa import check_photo_weight

MAX_K = 100  # a VQA prompt holds a handful of passages; thousands would only load the server
MAX_TEXT_CHARS = 2000  # queries are a dish name or a question; the model reads max_text_len tokens anyway
IMAGE_HELP = "give a JPEG/PNG/WebP photo"
QUERY_HELP = ('send {"text": "قورمه سبزی", "k": 5}, {"image": "<base64 photo>", "k": 5}, or both '
              '(a question about the photo)')
MAX_DETAIL_CHARS = 500  # an error body names the first problems and counts the rest: never megabytes
LOADING = "the server is still loading its models; retry in a few seconds (GET /readyz says when it is ready)"
TEXT_EMPTY = 'text is empty (only spaces or ZWNJ); give a few words, e.g. "قورمه سبزی"'
TEXT_DESCRIPTION = "a dish name or a question; at least one visible character (not only spaces, ZWNJ or marks)"
PHOTO_WEIGHT_DESCRIPTION = ("with a photo and a question only: the photo's share of the score, 0 (the question "
                            "alone) to 1 (the photo alone); default vqa.photo_weight's (CLI: --photo-weight)")

# What the schema can say of a query, so a generated client knows before it sends:
# - text: at least one character `normalize_text` keeps, i.e. one that is not whitespace, ZWNJ, a diacritic
#   or tatweel (or a presentation form of only those), an invisible or a control character (faclip.text; a test
#   checks the two agree on every character). Written as escapes with 4 hex digits, read alike by JSON Schema (ECMA 262), Python and Rust.
VISIBLE = (r"[^\u0000-\u0020\u007f-\u00a0\u00ad\u034f\u061c\u0640\u064b-\u065f\u0670\u115f\u1160\u1680\u180e"
           r"\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u2800\u3000\u3164\ufc5e-\ufc63\ufcf2-\ufcf4"
           r"\ufe70-\ufe7f\ufeff\uffa0\ufff9-\ufffb"
           "\U000e0001\U000e0020-\U000e007f]")  # tag characters as themselves (a \\u escape has 4 digits)
# - image: base64 (RFC 4648, padded), optionally as a data: URL, line breaks and spaces allowed between characters.
_B64, _SP = "[A-Za-z0-9+/]", r"[ \t\r\n]*"
BASE64_SPACE = " \t\r\n"
BASE64 = (f"^(data:[^,]{{0,94}},)?{_SP}(({_B64}{_SP}){{4}})*"
          f"(({_B64}{_SP}){{4}}|({_B64}{_SP}){{3}}={_SP}|({_B64}{_SP}){{2}}={_SP}={_SP})$")
MIN_IMAGE_CHARS = 4  # one base64 quantum
PATTERN_PROBLEM = {"text": TEXT_EMPTY, "image": "image is not valid base64; send the photo's bytes base64-encoded "
                                                "(a data: URL is accepted too)"}


def busy(retry_after: int) -> str:
    return (f"the server is at capacity (the queries it holds fill its --max-queue-wait); retry in {retry_after} s, "
            "as Retry-After says")

class ErrorOut(BaseModel):
    """Every 4xx and 503 body: one line saying what was wrong and what to do."""

    detail: str = Field(description=f"one line, at most {MAX_DETAIL_CHARS} characters")


def error_responses(*statuses: int) -> dict:
    """OpenAPI `responses` for the error statuses an endpoint can answer, all with the one-line body."""
    what = {400: "the body is not valid JSON (or not valid multipart/form-data, for an upload)", 413: "the body or photo is larger than --max-upload-mb",
            422: "a parameter is out of range, the text is blank after normalisation, or the photo does not decode",
            503: "the models are still loading, or the server is at capacity: retry after `Retry-After` seconds"}
    return {status: {"model": ErrorOut, "description": what[status]} for status in statuses}


class HitOut(BaseModel):
    """One passage, as `python -m faclip search --json` prints it."""

    rank: int = Field(description="1..k, by descending score")
    score: float = Field(description="cosine similarity of query and passage")
    passage_id: str
    food_id: str
    title: str
    passage_text: str


class SearchResponse(BaseModel):
    hits: list[HitOut]
    took_ms: float = Field(description="time spent on the query in the server (decode, encode, search)")


# The query rule as JSON Schema, for generated clients: text, image, or both (a question about the photo).
# photo_weight weighs a photo against a question: it needs both.
QUERY_RULE = {"anyOf": [{"required": ["text"]}, {"required": ["image"]}],
              "dependentRequired": {"photo_weight": ["image", "text"]}}
QUERY_FIELDS = {"text", "image", "k", "per_dish", "photo_weight"}


def _whole_float_as_int(value):
    # JSON Schema's "integer" is any number without a fraction, 5.0 too; a string or a bool is still refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole_float_as_int)]


class SearchRequest(BaseModel):
    """`text`, `image`, or both: a question about the photo (`Retriever.ask`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=QUERY_RULE)

    text: str = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, pattern=VISIBLE, examples=["قورمه سبزی"],
                      description=f"{TEXT_DESCRIPTION}; with `image`, a question about the photo")
    image: str = Field(None, min_length=MIN_IMAGE_CHARS, pattern=BASE64,
                       description="a JPEG/PNG/WebP photo in base64 (a data: URL is accepted too)")
    k: Whole = Field(5, ge=1, le=MAX_K, strict=True, description="how many passages")
    per_dish: Whole = Field(None, ge=1, strict=True, description="keep at most this many passages per dish")
    photo_weight: float = Field(None, ge=0, le=1, strict=True, allow_inf_nan=False,
                                description=PHOTO_WEIGHT_DESCRIPTION)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data):
        # Before field validation: a body with a million unknown keys is one error, not a million.
        if isinstance(data, dict):
            unknown = [key for key in data if key not in QUERY_FIELDS]
            if unknown:
                more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
                raise ValueError(f"unknown field {short(unknown[0])}{more}; {QUERY_HELP}")
        return data

    @model_validator(mode="after")
    def _one_query(self):
        if self.text is None and self.image is None:
            raise ValueError("give text, image, or both (a question about the photo)")
        return self


class InfoResponse(BaseModel):
    passages: int = Field(description="passages in the index")
    dishes: int = Field(description="distinct food_id values among them")
    dim: int
    factory: str = Field(description="FAISS index_factory string")
    docstore_sha256: str
    model_sha256: str = Field(description="sha256 of the text model weights the index was built with")
    index_sha256: str
    index_search: dict = Field(description="how the index was chosen and tuned, as its manifest records it "
                                           "(choice, reason, search knob, measured recall)")
    text_model: str
    text_source: str | None = Field(description="what the text model was built (or fine-tuned) from, per its faclip.json")
    base_text_sha256: str | None
    vision_model: str
    vision_source: str | None
    vision_sha256: str | None = Field(description="the vision model the text model was tuned against")
    device: str
    max_k: int
    max_upload_mb: float


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def capped(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_detail(errors, shown: int = 3) -> tuple[int, str]:
    """One line for pydantic's error list: (status, detail); a body that is not JSON at all is 400.

    The first `shown` problems are named and the rest counted, and the line is capped at MAX_DETAIL_CHARS."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            return 400, capped(one_line(f"the request body is not valid JSON ({reason}); {QUERY_HELP}"))
        if len(parts) == shown:
            continue
        loc = [short(part, quote=False) for part in error.get("loc", ()) if part not in ("body", "query")]
        msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "string_pattern_mismatch" and loc and loc[-1] in PATTERN_PROBLEM:
            parts.append(PATTERN_PROBLEM[loc[-1]])
            continue
        if loc == ["photo_weight"] and "input" in error:  # the CLI's --photo-weight message: one rule, one line
            parts.append(_photo_weight_problem(error["input"]))
            continue
        if error.get("type") == "missing" and loc == ["file"]:
            msg = f"no file uploaded; send the photo as multipart/form-data field `file` ({IMAGE_HELP})"
        elif error.get("type") == "extra_forbidden":
            msg = f"unknown field; {QUERY_HELP}"
        elif error.get("type") == "missing" and not loc:
            msg = f"the request body is empty; {QUERY_HELP}"
        elif "input" in error and loc and not isinstance(error["input"], (dict, list)):
            msg = f"{msg} (got {short(error['input'])})"
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    if len(errors) > len(parts) and parts:
        parts.append(f"and {len(errors) - len(parts)} more problems")
    return 422, capped(one_line("; ".join(parts) or "invalid request"))


def _photo_weight_problem(value) -> str:
    try:
        check_photo_weight(value)
    except FaclipError as err:
        return str(err)
    return f"photo_weight={short(value)} is invalid; use a number from 0 to 1"  # e.g. "0.5" as a JSON string


def short(value, quote: bool = True) -> str:
    text = repr(value) if quote else str(value)
    return text if len(text) <= 40 else text[:37] + "..."

