"""Label and field selectors with the real API server's grammar and matching rules.

Label selectors take the full set-based grammar, requirements joined by commas (AND):
``key``, ``!key``, ``key=v``, ``key==v``, ``key!=v``, ``key in (a,b)``, ``key notin (a,b)``,
``key>3``, ``key<3``. ``!=`` and ``notin`` also match objects without the label, as upstream.
Field selectors take ``field=v``, ``field==v`` and ``field!=v`` terms with backslash escapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .resources import DNS1123_SUBDOMAIN, name_problem

_QUALIFIED_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_TOKEN = re.compile(r"\s*(?:(?P<operator>==|!=|=|!|\(|\)|,|<|>)|(?P<identifier>[^\s!=(),<>]+))")
_SET_OPERATORS = ("in", "notin")


class SelectorError(ValueError):
    """The selector text does not parse; the API server answers 400 Bad Request."""


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key (a qualified name), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or name_problem(prefix, DNS1123_SUBDOMAIN)):
        return f"prefix part of {key!r} must be a DNS-1123 subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME_PART.fullmatch(name):
        return (
            f"name part of {key!r} must be at most 63 characters, alphanumeric, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None."""
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        return (
            f"label value {value!r} must be at most 63 characters, alphanumeric, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return None


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of: exists, !, =, ==, !=, in, notin, <, >
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case "exists":
                return present
            case "!":
                return not present
            case "=" | "==" | "in":
                return present and labels[self.key] in self.values
            case "!=" | "notin":
                return not present or labels[self.key] not in self.values
            case _:  # < and >: only integer label values can match
                if not present:
                    return False
                try:
                    actual = int(labels[self.key])
                except ValueError:
                    return False
                bound = int(self.values[0])
                return actual < bound if self.operator == "<" else actual > bound


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)


class _Tokens:
    """The selector's tokens with one of lookahead; identifiers are ("id", text)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:  # only trailing whitespace is left
                if text[position:].strip():
                    raise SelectorError(f"unable to parse requirement: {text!r}")
                break
            operator = match.group("operator")
            if operator is not None:
                self._tokens.append((operator, operator))
            else:
                self._tokens.append(("id", match.group("identifier")))
            position = match.end()
        self._next = 0

    def peek(self) -> tuple[str, str] | None:
        return self._tokens[self._next] if self._next < len(self._tokens) else None

    def take(self, expected: str) -> str:
        token = self.peek()
        if token is None or token[0] != expected:
            found = "end of selector" if token is None else repr(token[1])
            wanted = "identifier" if expected == "id" else repr(expected)
            raise SelectorError(
                f"unable to parse requirement: found {found}, expected {wanted} in {self.text!r}"
            )
        self._next += 1
        return token[1]

    def at_requirement_end(self) -> bool:
        token = self.peek()
        return token is None or token[0] == ","


def parse_label_selector(text: str) -> LabelSelector:
    tokens = _Tokens(text)
    if tokens.peek() is None:
        return LabelSelector()
    requirements = [_parse_requirement(tokens)]
    while tokens.peek() is not None:
        tokens.take(",")
        requirements.append(_parse_requirement(tokens))
    return LabelSelector(tuple(requirements))


def _parse_requirement(tokens: _Tokens) -> Requirement:
    if tokens.peek() == ("!", "!"):
        tokens.take("!")
        return Requirement(_checked_key(tokens.take("id")), "!")
    key = _checked_key(tokens.take("id"))
    if tokens.at_requirement_end():
        return Requirement(key, "exists")
    token = tokens.peek()
    assert token is not None
    kind, text = token
    if kind in ("=", "==", "!="):
        tokens.take(kind)
        value = "" if tokens.at_requirement_end() else tokens.take("id")
        return Requirement(key, kind, (_checked_value(value),))
    if kind in ("<", ">"):
        tokens.take(kind)
        bound = tokens.take("id")
        if not re.fullmatch(r"[-+]?\d+", bound):
            raise SelectorError(
                f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an "
                f"integer, not {bound!r}"
            )
        return Requirement(key, kind, (bound,))
    if kind == "id" and text in _SET_OPERATORS:
        tokens.take("id")
        return Requirement(key, text, _parse_value_set(tokens))
    raise SelectorError(
        f"unable to parse requirement: found {text!r}, expected one of "
        "'=', '==', '!=', 'in', 'notin', '<', '>'"
    )


def _parse_value_set(tokens: _Tokens) -> tuple[str, ...]:
    # As upstream: "()" is the set holding the empty string, and "(a,,b)" holds "" too.
    tokens.take("(")
    values: list[str] = []
    while True:
        token = tokens.peek()
        if token is not None and token[0] == "id":
            values.append(_checked_value(tokens.take("id")))
        else:
            values.append("")
        token = tokens.peek()
        if token is not None and token[0] == ",":
            tokens.take(",")
            continue
        tokens.take(")")
        return tuple(dict.fromkeys(values))


def _checked_key(key: str) -> str:
    problem = label_key_problem(key)
    if problem:
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}: {problem}")
    return key


def _checked_value(value: str) -> str:
    problem = label_value_problem(value)
    if problem:
        raise SelectorError(f"unable to parse requirement: {problem}")
    return value


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool

    def matches(self, fields: Mapping[str, str]) -> bool:
        return (fields.get(self.field) == self.value) == self.equal


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(requirement.matches(fields) for requirement in self.requirements)


def parse_field_selector(text: str, supported_fields: Sequence[str]) -> FieldSelector:
    requirements = []
    for term in _split_unescaped(text, ","):
        if not term:
            continue
        field, operator, escaped_value = _split_field_term(term, text)
        if field not in supported_fields:
            raise SelectorError(f"field label not supported: {field}")
        requirements.append(
            FieldRequirement(field, _unescape(escaped_value, text), operator != "!=")
        )
    return FieldSelector(tuple(requirements))


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _split_field_term(term: str, selector: str) -> tuple[str, str, str]:
    for index in range(len(term)):
        for operator in ("!=", "==", "="):
            if term.startswith(operator, index):
                return term[:index], operator, term[index + len(operator) :]
    raise SelectorError(f"invalid selector: {selector!r}; can't understand {term!r}")


def _unescape(value: str, selector: str) -> str:
    result, escaped = [], False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise SelectorError(
                    f"invalid field selector: invalid escape sequence in {selector!r}"
                )
            result.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise SelectorError(f"invalid field selector: unescaped {char!r} in {selector!r}")
        else:
            result.append(char)
    if escaped:
        raise SelectorError(f"invalid field selector: trailing backslash in {selector!r}")
    return "".join(result)


def object_fields(
    obj: Mapping[str, Any], namespaced: bool, extra_fields: Sequence[str]
) -> dict[str, str]:
    """The field set a field selector is matched against, as the resource's registry builds it."""
    metadata = obj.get("metadata", {})
    fields = {"metadata.name": metadata.get("name", "")}
    if namespaced:
        fields["metadata.namespace"] = metadata.get("namespace", "")
    for path in extra_fields:
        fields[path] = _field_text(_lookup(obj, path))
    return fields


def supported_fields(namespaced: bool, extra_fields: Sequence[str]) -> list[str]:
    return ["metadata.name", *(["metadata.namespace"] if namespaced else []), *extra_fields]


def _lookup(obj: Mapping[str, Any], dotted_path: str) -> Any:
    value: Any = obj
    for part in dotted_path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _field_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # Go formats booleans in field sets as "true"/"false"
        return "true" if value else "false"
    return str(value)
