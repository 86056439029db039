"""The Open Inference Protocol (KServe V2 REST) on the driver's app: health, metadata, config and ``infer``.

``mount_oip(app, driver)`` adds the ``/v2`` routes. They only translate: each row of an
``infer`` request goes through the same ``check_input`` and ``Driver.predict`` as one
``POST /v1/predict``, so a row's answer is exactly that call's. The rows of one request
are awaited concurrently (up to ``Limits.max_rows_in_flight`` at a time), so they batch in
the encoders with each other and with other traffic. Errors are /v1's answers
(``deployments.http.errors.error_response``: status, headers, log, metric) in the protocol's
body, ``{"error": "<message>"}``. The tensor wire formats are ``deployments.http.oip_tensors``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Mount

from deployments.http.errors import (BadRequest, PayloadTooLarge, ServiceError, Unavailable, UnsupportedMediaType,
                                     error_response)
from deployments.http.oip_tensors import (HEADER_LENGTH, decode_bytes, encode_output, flag, flatten, parameters_of,
                                          response_body, split_body, take_binary)
from deployments.http.parsing import PredictInput, check_input, read_body

logger = logging.getLogger("ray.serve")

MODEL_NAME = "sentiment"
# <framework>_<format>, as the protocol's platform names go: transformers encoders in PyTorch.
PLATFORM = "pytorch_transformers"
INPUTS = ("text", "audio")
OUTPUT_TYPES = {"label": "BYTES", "scores": "FP32", "sentiment": "FP32"}
# Triton's model configuration names for the protocol's datatypes.
CONFIG_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32"}
# No Content-Type (what tritonclient sends), JSON, or JSON plus binary tensors.
CONTENT_TYPES = {"", "application/json", "application/octet-stream"}


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class RowFailed(Exception):
    """One row's error, with the row's index for the message; its status is the cause's."""

    def __init__(self, row: int, cause: Exception):
        super().__init__(row, cause)
        self.row, self.cause = row, cause


def _shown(value) -> str:
    """A client's value quoted in an error message, cut short (a name or shape can be any size)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def protocol_error(exc: Exception, request_id: str | None) -> JSONResponse:
    """The protocol's error body, ``{"error": "<message>"}``, with everything else of /v1's answer.

    ``error_response`` still does the work (the status, Retry-After on 503, the log line and the
    error metric), so the two APIs cannot drift apart; only its body is reshaped here.
    """
    row, cause = (exc.row, exc.cause) if isinstance(exc, RowFailed) else (None, exc)
    answer = error_response(cause, request_id)
    message = json.loads(answer.body)["error"]["message"]
    if row is not None:
        message = f"row {row}: {message}"
    headers = {k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")}
    return JSONResponse({"error": message}, status_code=answer.status_code, headers=headers)


def _in_protocol_form(handler):
    @functools.wraps(handler)
    async def wrapped(request: Request):
        try:
            return await handler(request)
        except Exception as exc:
            return protocol_error(exc, getattr(request.state, "request_id", None))

    return wrapped


# ---- the request: tensors -> rows --------------------------------------------------------


def _row_count(tensor: dict, name: str, limits) -> int:
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1):
        raise BadRequest(f"input {name!r}: shape must be [N] or [N, 1] with N >= 1, not {_shown(shape)}",
                         "invalid_shape")
    if shape[0] > limits.max_batch_rows:
        raise PayloadTooLarge(f"input {name!r} has {shape[0]} rows; the limit is {limits.max_batch_rows}",
                              "too_many_rows")
    return shape[0]


def _element(value, name: str, binary: bool):
    """One element as ``check_input`` takes it: text as str, audio as the file's bytes."""
    if binary:
        if name == "audio":
            return value
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("input 'text': an element is not valid UTF-8", "invalid_text") from None
    if not isinstance(value, str):
        raise BadRequest(f"input {name!r}: BYTES elements must be JSON strings", "invalid_type")
    if name == "text":
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("input 'audio': in JSON an element must be base64 of the audio file "
                         "(or send it with the binary tensor extension)", "invalid_base64") from None


def read_rows(header: dict, rest, limits) -> list[PredictInput]:
    tensors = header.get("inputs")
    if not isinstance(tensors, list) or not tensors or not all(isinstance(t, dict) for t in tensors):
        raise BadRequest("'inputs' must be a non-empty list of tensors", "invalid_request")
    blobs = take_binary(tensors, rest)
    columns: dict[str, list] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.get("name")
        if name not in INPUTS:
            raise BadRequest(f"unknown input {_shown(name)}; the inputs are 'text' and 'audio'", "unknown_input")
        if name in columns:
            raise BadRequest(f"input {name!r} is given twice", "invalid_request")
        if tensor.get("datatype") != "BYTES":
            raise BadRequest(f"input {name!r} must have datatype BYTES, not {_shown(tensor.get('datatype'))}",
                             "invalid_datatype")
        rows = _row_count(tensor, name, limits)
        binary = index in blobs
        values = decode_bytes(blobs[index], name) if binary else flatten(tensor.get("data"), name)
        if len(values) != rows:
            raise BadRequest(f"input {name!r}: shape {tensor['shape']} needs {rows} elements, got {len(values)}",
                             "invalid_shape")
        columns[name] = [_element(v, name, binary) for v in values]
    counts = {len(c) for c in columns.values()}
    if len(counts) != 1:
        raise BadRequest("inputs 'text' and 'audio' must have the same number of rows", "invalid_shape")
    parsed = []
    for row in range(counts.pop()):
        try:
            parsed.append(check_input(columns["text"][row] if "text" in columns else None,
                                      columns["audio"][row] if "audio" in columns else None, limits))
        except Exception as exc:
            raise RowFailed(row, exc) from exc
    return parsed


def requested_outputs(header: dict) -> list[tuple[str, bool]]:
    """(name, binary) for each output to return; all of them when ``outputs`` is absent or empty."""
    binary_default = flag(parameters_of(header), "binary_data_output", False)
    outputs = header.get("outputs") or [{"name": name} for name in OUTPUT_TYPES]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects", "invalid_request")
    chosen = []
    for output in outputs:
        name = output.get("name")
        if not isinstance(name, str) or name not in OUTPUT_TYPES:
            raise BadRequest(f"unknown output {_shown(name)}; the outputs are {', '.join(OUTPUT_TYPES)}",
                             "unknown_output")
        if name in (n for n, _ in chosen):
            raise BadRequest(f"output {name!r} is requested twice", "invalid_request")
        chosen.append((name, flag(parameters_of(output), "binary_data", binary_default)))
    return chosen


async def predict_rows(driver, rows: list[PredictInput], request_id: str, in_flight: int) -> list[dict]:
    """``Driver.predict`` for every row, ``in_flight`` at a time; the first failure cancels the rest."""
    gate = asyncio.Semaphore(in_flight)

    async def one(row: int, parsed: PredictInput) -> dict:
        async with gate:
            try:
                return await driver.predict(parsed, f"{request_id}.{row}")
            except Exception as exc:
                raise RowFailed(row, exc) from exc

    tasks = [asyncio.ensure_future(one(i, parsed)) for i, parsed in enumerate(rows)]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for the finished ones


def output_tensors(results: list[dict], labels: list[str], chosen: list[tuple[str, bool]]):
    columns = {
        "label": ([len(results)], [r["label"] for r in results]),
        "scores": ([len(results), len(labels)], [[r["scores"][label] for label in labels] for r in results]),
        "sentiment": ([len(results)], [r["sentiment"] for r in results]),
    }
    return [encode_output(name, OUTPUT_TYPES[name], *columns[name], binary) for name, binary in chosen]


# ---- metadata --------------------------------------------------------------------------


def model_metadata(driver) -> dict:
    bundle, limits = driver.bundle, driver.settings.limits
    return {
        "name": MODEL_NAME,
        "versions": [bundle.version],
        "platform": PLATFORM,
        "inputs": [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in INPUTS],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, len(bundle.labels)]},
                    {"name": "sentiment", "datatype": "FP32", "shape": [-1]}],
        # Protocol parameters are scalars, so the labels are one comma-separated string.
        "parameters": {
            "labels": ",".join(bundle.labels),
            "scores": "probability per label, in the order of 'labels'",
            "sentiment": "MOSI scale, -3 (negative) to +3 (positive)",
            "rows": "text and audio are shape [N] or [N, 1]; an empty element means that modality is "
                    "missing for that row; each row is one /v1/predict prediction",
            "audio_encoding": "each element is one WAV/FLAC/OGG/MP3 file: its raw bytes with the binary "
                              "tensor extension, base64 of them in JSON 'data'",
            "max_batch_rows": limits.max_batch_rows,
            "bundle": bundle.name,
            "trained": bundle.trained,
        },
    }


def model_config(metadata: dict) -> dict:
    """Triton's model configuration extension, minimal: what perf_analyzer reads. The batch
    dimension is part of each shape (``max_batch_size`` 0), and either input may be left out."""
    def entries(tensors, **extra):
        return [{"name": t["name"], "data_type": CONFIG_TYPES[t["datatype"]], "dims": t["shape"], **extra}
                for t in tensors]

    return {"name": MODEL_NAME, "platform": PLATFORM, "max_batch_size": 0,
            "input": entries(metadata["inputs"], optional=True), "output": entries(metadata["outputs"])}


# ---- routes ----------------------------------------------------------------------------


def mount_oip(app: FastAPI, driver) -> None:
    """Add the ``/v2`` routes for ``driver`` (a ``deployments.driver.Driver``) to ``app``."""
    limits, version = driver.settings.limits, driver.bundle.version
    metadata = model_metadata(driver)
    config = model_config(metadata)
    server = {"name": "multimodal-sentiment-serve", "version": app.version,
              "extensions": ["binary_tensor_data", "model_configuration"]}
    router = APIRouter(tags=["Open Inference Protocol (v2)"])

    def check_model(request: Request) -> None:
        model_name, model_version = request.path_params["model_name"], request.path_params.get("model_version")
        if model_name != MODEL_NAME:
            raise ModelNotFound(f"unknown model {_shown(model_name)}; this server serves {MODEL_NAME!r}")
        if model_version is not None and model_version != version:
            raise ModelNotFound(f"model {MODEL_NAME!r} has no version {_shown(model_version)}; it has {version!r}")

    async def ready() -> bool:
        return (await driver.healthz()).status_code == 200

    def route(method: str, path: str, summary: str, versioned: bool = False):
        def register(handler):
            handler = _in_protocol_form(handler)
            router.add_api_route(path, handler, methods=[method], summary=summary)
            if versioned:
                # The same handler: it finds the version in request.path_params.
                router.add_api_route(path.replace("{model_name}", "{model_name}/versions/{model_version}"),
                                     handler, methods=[method], summary=summary + " (a given version)")
            return handler

        return register

    @route("GET", "/v2/health/live", "Liveness: 200 while the driver answers")
    async def live(request: Request):
        return {"live": True}

    @route("GET", "/v2/health/ready", "Readiness: 200 only when every deployment answers")
    async def server_ready(request: Request):
        if not await ready():
            raise Unavailable("a model deployment does not answer")
        return {"ready": True}

    @route("GET", "/v2", "Server metadata")
    async def server_metadata(request: Request):
        return server

    @route("GET", "/v2/models/{model_name}", "Model metadata", versioned=True)
    async def get_metadata(request: Request):
        check_model(request)
        return metadata

    @route("GET", "/v2/models/{model_name}/ready", "Model readiness", versioned=True)
    async def get_ready(request: Request):
        check_model(request)
        if not await ready():
            raise Unavailable(f"model {MODEL_NAME!r} is not ready: a model deployment does not answer")
        return {"name": MODEL_NAME, "ready": True}

    @route("GET", "/v2/models/{model_name}/config", "Model configuration (Triton's extension)", versioned=True)
    async def get_config(request: Request):
        check_model(request)
        return config

    @route("POST", "/v2/models/{model_name}/infer", "Inference: one /v1/predict per row", versioned=True)
    async def infer(request: Request):
        check_model(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            raise UnsupportedMediaType(f"content type {content_type} is not supported; use application/json "
                                       "(or application/octet-stream with the binary tensor extension)")
        body = await read_body(request, limits.max_body_bytes)
        header, rest = split_body(body, request.headers.get(HEADER_LENGTH))
        if header.get("id") is not None and not isinstance(header["id"], str):
            raise BadRequest("'id' must be a string", "invalid_type")
        chosen = requested_outputs(header)
        rows = read_rows(header, rest, limits)
        request_id = request.state.request_id
        # Sizes only: text and audio never reach the logs.
        logger.info("request %s: v2 infer rows=%d text_chars=%d audio_bytes=%d", request_id, len(rows),
                    sum(len(r.text or "") for r in rows), sum(len(r.audio or b"") for r in rows))
        results = await predict_rows(driver, rows, request_id, limits.max_rows_in_flight)
        tensors = output_tensors(results, driver.bundle.labels, chosen)
        answer = {"model_name": MODEL_NAME, "model_version": version, "outputs": [entry for entry, _ in tensors]}
        if header.get("id") is not None:
            answer["id"] = header["id"]
        content, headers = response_body(answer, [raw for _, raw in tensors])
        return Response(content, headers=headers)

    before = len(app.router.routes)
    app.include_router(router)
    # Ahead of any mount: the Gradio UI mounted at "/" matches every path, and routes match in order.
    added = app.router.routes[before:]
    del app.router.routes[before:]
    first_mount = next((i for i, r in enumerate(app.router.routes) if isinstance(r, Mount)), len(app.router.routes))
    app.router.routes[first_mount:first_mount] = added
