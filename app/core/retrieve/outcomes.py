"""What a retrieve can come to besides an answer; each door turns these into its own status codes."""

from __future__ import annotations


class NotFound(LookupError):
    """No such study, series, instance, frame source or bulk data element (HTTP 404, DIMSE 0xA701-ish)."""


class NotAcceptable(Exception):
    """The instance cannot be given in any representation the client accepts (HTTP 406, PS3.18 §8.7.8)."""


class InvalidRequest(ValueError):
    """The request cannot apply to this instance: frame out of range, no pixel data, bad path (HTTP 400)."""


class RangeNotSatisfiable(InvalidRequest):
    """A byte range that starts beyond the end of the value (HTTP 416, RFC 9110 §15.5.17)."""


class RetrieveFailed(RuntimeError):
    """The archive holds the instance but cannot read it (file missing or unreadable): a server fault."""


class RendersBusy(Exception):
    """No render turn came free within `RenderLimits.wait_seconds` (HTTP 503 with Retry-After)."""
