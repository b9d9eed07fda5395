"""Neutral error kinds raised by the core; every transport maps them to its own codes."""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """Error kinds, named as gRPC / TensorFlow status codes."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL = "INTERNAL"
    UNKNOWN = "UNKNOWN"


class ServingError(Exception):
    """An error with a kind every transport knows how to report."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.kind.value}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(ErrorKind.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(ErrorKind.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(ErrorKind.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(ErrorKind.UNAVAILABLE, message)


def internal(message: str) -> ServingError:
    return ServingError(ErrorKind.INTERNAL, message)


def resource_exhausted(message: str) -> ServingError:
    return ServingError(ErrorKind.RESOURCE_EXHAUSTED, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(ErrorKind.UNIMPLEMENTED, message)
