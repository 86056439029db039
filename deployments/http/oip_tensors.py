"""The Open Inference Protocol's tensor wire formats: JSON ``data``, BYTES elements and the binary tensor extension.

The binary tensor extension (Triton's, which KServe's V2 clients speak) sends a JSON
header, then the raw tensors: ``Inference-Header-Content-Length`` says where the JSON
ends, and each binary tensor's ``parameters.binary_data_size`` says how many of the
following bytes are its own, in the order the tensors are listed. A BYTES tensor's raw
form is its elements in row-major order, each a 4-byte little-endian length and its bytes.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from deployments.http.errors import BadRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header of a request and the binary bytes after it (empty without the extension)."""
    end = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} must be a number of bytes no larger than the body",
                             "invalid_binary_data")
        end = int(header_length)
    try:
        header = json.loads(bytes(body[:end]))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"malformed JSON: {str(exc)[:200]}", "malformed_json") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply", "malformed_json") from None
    if not isinstance(header, dict):
        raise BadRequest("the JSON body must be an object", "invalid_type")
    return header, memoryview(body)[end:]


def take_binary(tensors: list[dict], rest: memoryview) -> dict[int, memoryview]:
    """Each binary tensor's bytes, by its index in ``tensors``; every byte after the header is accounted for."""
    blobs, offset = {}, 0
    for index, tensor in enumerate(tensors):
        size = parameters_of(tensor).get("binary_data_size")
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(rest):
            name = str(tensor.get("name"))[:60]
            raise BadRequest(f"input {name!r}: binary_data_size {str(size)[:30]} does not fit the body",
                             "invalid_binary_data")
        blobs[index] = rest[offset:offset + size]
        offset += size
    if offset != len(rest):
        raise BadRequest(f"{len(rest) - offset} bytes after the JSON header belong to no input "
                         f"(binary_data_size and {HEADER_LENGTH} disagree)", "invalid_binary_data")
    return blobs


def parameters_of(obj: dict) -> dict:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object", "invalid_request")
    return parameters


def flag(parameters: dict, name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {name!r} must be a boolean", "invalid_type")
    return value


def decode_bytes(blob: memoryview, name: str) -> list[bytes]:
    """The elements of a raw BYTES tensor."""
    elements, offset = [], 0
    while offset < len(blob):
        if offset + _LENGTH.size > len(blob):
            raise BadRequest(f"input {name!r}: truncated BYTES element length", "invalid_binary_data")
        (size,) = _LENGTH.unpack_from(blob, offset)
        offset += _LENGTH.size
        if offset + size > len(blob):
            raise BadRequest(f"input {name!r}: a BYTES element runs past its binary_data_size", "invalid_binary_data")
        elements.append(bytes(blob[offset:offset + size]))
        offset += size
    return elements


def flatten(data, name: str) -> list:
    """JSON ``data`` in row-major order: flat as Triton sends it, or nested as the spec also allows."""
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: 'data' must be a list", "invalid_type")
    flat, stack = [], [iter(data)]
    while stack:  # iterative: a deeply nested list must not exhaust the stack
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


_END = object()


def encode_output(name: str, datatype: str, shape: list[int], values: list, binary: bool) -> tuple[dict, bytes | None]:
    """One response tensor: its JSON entry and, when ``binary``, its raw bytes."""
    entry = {"name": name, "datatype": datatype, "shape": shape}
    if datatype == "BYTES":
        raw = b"".join(_LENGTH.pack(len(v)) + v for v in (s.encode() for s in values)) if binary else None
        data = values
    else:
        array = np.asarray(values, dtype="<f4").reshape(-1)
        raw = array.tobytes() if binary else None
        # The shortest decimal that reads back as the same float32 ("0.6", not "0.6000000238418579").
        data = [float(str(v)) for v in array]
    if binary:
        entry["parameters"] = {"binary_data_size": len(raw)}
    else:
        entry["data"] = data
    return entry, raw


def response_body(header: dict, raws: list[bytes | None]) -> tuple[bytes, dict]:
    """The body and its headers: plain JSON, or JSON plus the binary tensors after it."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    blobs = [raw for raw in raws if raw is not None]
    if not blobs:
        return encoded, {"content-type": "application/json"}
    return encoded + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(encoded))}
