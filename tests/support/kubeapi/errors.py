"""API errors as the real server reports them: a metav1.Status with code, reason and details."""

from __future__ import annotations

from typing import Any

from .resources import ResourceType


class ApiError(Exception):
    """An error answer; ``status`` is the Status object the server sends for it."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        list_continue: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.list_continue = list_continue

    @property
    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {"continue": self.list_continue} if self.list_continue else {},
            "status": "Failure",
            "message": self.message,
        }
        # An empty reason is metav1.StatusReasonUnknown, which Go's omitempty leaves out.
        if self.reason:
            status["reason"] = self.reason
        if self.details is not None:
            status["details"] = self.details
        status["code"] = self.code
        return status


def _object_details(resource: ResourceType, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = resource.plural
    return details


def not_found(resource: ResourceType, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{resource.qualified_resource} "{name}" not found',
        _object_details(resource, name),
    )


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(resource: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{resource.qualified_resource} "{name}" already exists',
        _object_details(resource, name),
    )


def conflict(resource: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource.qualified_resource} "{name}": {why}',
        _object_details(resource, name),
    )


def precondition_failed(resource: ResourceType, name: str, why: str) -> ApiError:
    """409 for a delete whose preconditions fail: kube-apiserver names the kind here."""
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource.kind} "{name}": {why}',
        _object_details(resource, name),
    )


def modified_since_read(resource: ResourceType, name: str) -> ApiError:
    return conflict(
        resource,
        name,
        "the object has been modified; please apply your changes to the latest version and "
        "try again",
    )


def invalid(resource: ResourceType, name: str, field: str, cause: str, why: str) -> ApiError:
    """422: ``cause`` is a field error type such as FieldValueRequired or FieldValueInvalid."""
    details: dict[str, Any] = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = resource.kind
    details["causes"] = [{"reason": cause, "message": why, "field": field}]
    return ApiError(
        422,
        "Invalid",
        f'{resource.qualified_kind} "{name}" is invalid: {field}: {why}',
        details,
    )


def invalid_parameter(field: str, why: str) -> ApiError:
    """422 for a query parameter combination the server refuses (as ListOptions validation)."""
    return ApiError(
        422,
        "Invalid",
        f'ListOptions.meta.k8s.io "" is invalid: {field}: {why}',
        {
            "group": "meta.k8s.io",
            "kind": "ListOptions",
            "causes": [{"reason": "FieldValueForbidden", "message": why, "field": field}],
        },
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed() -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        {},
    )


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format ({content_type}) - accepted media "
        "types include: application/merge-patch+json",
        {},
    )


def expired(message: str, list_continue: str | None = None) -> ApiError:
    return ApiError(410, "Expired", message, list_continue=list_continue)


def resource_version_too_large(requested: int, current: int) -> ApiError:
    return ApiError(
        504,
        "Timeout",
        f"Too large resource version: {requested}, current: {current}",
        {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )


def injected(code: int) -> ApiError:
    """The answer of a failure injected by a test (``KubeApiServer.failing``)."""
    if code == 429:
        return ApiError(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            {"retryAfterSeconds": 1},
        )
    if code == 503:
        return ApiError(503, "ServiceUnavailable", "the server is currently unable to handle it")
    return ApiError(
        code,
        "InternalError",
        "Internal error occurred: injected failure",
        {"causes": [{"message": "injected failure"}]},
    )


def metric_not_found(resource: str, metric: str, name: str | None = None) -> ApiError:
    """404 as custom-metrics-apiserver's NewMetricNotFoundError / NewMetricNotFoundForError."""
    described = resource if name is None else f"{resource} {name}"
    return ApiError(
        404, "NotFound", f"the server could not find the metric {metric} for {described}"
    )


def unhandled(message: str) -> ApiError:
    """500 for a plain error (not a Status) that a handler returned: the apiserver library
    answers it with the error's text and no reason."""
    return ApiError(500, "", message)
