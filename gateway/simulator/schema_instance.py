"""A valid instance of a JSON schema: how the simulator honours `response_format`.

`instance(schema)` builds a value from the schema's own keywords (required properties,
`minItems`, bounds, formats, patterns, `$ref`s) and checks every choice it makes against the
schema with `jsonschema`, the same validator the cascade uses on real answers. Where a
keyword offers alternatives (`anyOf`, `oneOf`, `enum`, a list of types) the first alternative
whose value validates wins, so `oneOf` branches that overlap are told apart by checking, not by
guessing. Optional properties are left out: the smallest valid instance is also the one that
cannot recurse forever. A schema with no valid instance (or one beyond this builder: `not`,
non-local `$ref`s, regexes with back-references) raises `SchemaUnsatisfiable`.

`variant` makes siblings differ (`uniqueItems` arrays, enum rotation); it is threaded through
so two items of one array are never built identically when the schema allows otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from gateway.simulator import schema_values
from gateway.simulator.schema_values import SchemaUnsatisfiable

__all__ = ["SchemaUnsatisfiable", "instance"]

_ROOT_URI = "urn:podium:schema"
_MAX_DEPTH = 48     # deeper than any real schema nests; only endless recursion gets here
_SOFT_DEPTH = 12    # past this, alternatives that end the recursion (null, []) go first


def instance(schema: Mapping[str, Any] | bool) -> Any:
    """A value that validates against `schema` (Draft 2020-12 unless `$schema` says else)."""
    return _Builder(schema).build()


class _Builder:
    def __init__(self, schema: Mapping[str, Any] | bool) -> None:
        self.root = schema
        resource = Resource.from_contents(schema, default_specification=DRAFT202012)
        self.resolver = Registry().with_resource(_ROOT_URI, resource).crawl() \
            .resolver(base_uri=_ROOT_URI)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        self.validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
        self.expanding: list[str] = []   # the $refs being built, outermost first

    def build(self) -> Any:
        value = self.value(self.root, 0, 0)
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
        if error is not None:
            raise SchemaUnsatisfiable(f"no valid instance found: {error.message}")
        return value

    def valid(self, schema: Mapping[str, Any] | bool, value: Any) -> bool:
        return bool(self.validator.evolve(schema=schema).is_valid(value))

    def value(self, schema: Mapping[str, Any] | bool, variant: int, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise SchemaUnsatisfiable("the schema recurses without a way to stop")
        if schema is True:
            return None
        if schema is False or not isinstance(schema, Mapping):
            raise SchemaUnsatisfiable("the schema `false` has no instance")
        if "$ref" in schema:
            self.expanding.append(str(schema["$ref"]))
            try:
                return self.value(self._deref(schema), variant, depth + 1)
            finally:
                self.expanding.pop()
        if "const" in schema:
            return schema["const"]
        for key in ("enum", "examples"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self._pick(schema, schema[key], variant)
        if "allOf" in schema:
            return self.value(_merge_all(schema), variant, depth + 1)
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list):
                return self._branch(schema, key, variant, depth)
        return self._typed(schema, variant, depth)

    def _deref(self, schema: Mapping[str, Any]) -> Mapping[str, Any] | bool:
        try:
            target = self.resolver.lookup(str(schema["$ref"])).contents
        except Unresolvable as exc:
            raise SchemaUnsatisfiable(f"cannot resolve $ref {schema['$ref']!r}") from exc
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        if not rest:
            return target  # type: ignore[no-any-return]  # a resolved subschema
        if not isinstance(target, Mapping):
            return target if target is False else rest
        return _merge(target, rest)

    def _pick(self, schema: Mapping[str, Any], options: list[Any], variant: int) -> Any:
        for k in range(len(options)):
            option = options[(variant + k) % len(options)]
            if self.valid(schema, option):
                return option
        if "enum" not in schema:   # examples are a hint, not a constraint
            return self._typed({k: v for k, v in schema.items() if k != "examples"}, variant, 0)
        raise SchemaUnsatisfiable(f"no enum value of {options!r} fits the schema")

    def _branch(self, schema: Mapping[str, Any], key: str, variant: int, depth: int) -> Any:
        rest = {k: v for k, v in schema.items() if k != key}
        branches = list(schema[key])
        if depth > _SOFT_DEPTH or any(_ref(b) in self.expanding for b in branches):
            # A branch that recurses into a definition being built: stop here if allowed.
            branches.sort(key=lambda b: not (isinstance(b, Mapping) and b.get("type") == "null"))
        for branch in branches:
            merged = _merge(rest, branch) if isinstance(branch, Mapping) else branch
            try:
                candidate = self.value(merged, variant, depth + 1)
            except SchemaUnsatisfiable:
                continue
            if self.valid(schema, candidate):
                return candidate
        raise SchemaUnsatisfiable(f"no branch of {key} yields a valid instance")

    def _typed(self, schema: Mapping[str, Any], variant: int, depth: int) -> Any:
        kinds = _types(schema)
        if depth > _SOFT_DEPTH and "null" in kinds:
            return None
        if len(kinds) == 1:
            return self._of_type(kinds[0], schema, variant, depth)
        # Siblings rotate through the real types; null only when none of them fits.
        real = [k for k in kinds if k != "null"]
        turn = variant % len(real) if real else 0
        for kind in [*real[turn:], *real[:turn], *(["null"] if "null" in kinds else [])]:
            try:
                candidate = self._of_type(kind, schema, variant, depth)
            except SchemaUnsatisfiable:
                continue
            if self.valid(schema, candidate):
                return candidate
        raise SchemaUnsatisfiable(f"no type of {kinds!r} yields a valid instance")

    def _of_type(self, kind: str, schema: Mapping[str, Any], variant: int, depth: int) -> Any:
        if kind == "object":
            return self._object(schema, variant, depth)
        if kind == "array":
            return self._array(schema, variant, depth)
        if kind == "string":
            return schema_values.string(schema, variant)
        if kind in ("integer", "number"):
            return schema_values.number(schema, variant, integer=kind == "integer")
        if kind == "boolean":
            return variant % 2 == 0
        return None

    def _object(self, schema: Mapping[str, Any], variant: int, depth: int) -> dict[str, Any]:
        props: Mapping[str, Any] = schema.get("properties") or {}
        names = list(dict.fromkeys(schema.get("required") or ()))
        for name in names:                              # dependentRequired pulls in more
            names += [d for d in (schema.get("dependentRequired") or {}).get(name, ())
                      if d not in names]
        names += [n for n in props if n not in names][:max(0, _min(schema, "minProperties")
                                                            - len(names))]
        out = {name: self.value(_property(schema, name), variant, depth + 1) for name in names}
        extra = schema.get("additionalProperties", True)
        for n in range(_min(schema, "minProperties") - len(out)):
            if extra is False:
                raise SchemaUnsatisfiable("minProperties exceeds the properties allowed")
            out[f"key{n}"] = self.value(extra, variant + n, depth + 1)
        return out

    def _array(self, schema: Mapping[str, Any], variant: int, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", True)
        if isinstance(items, list):                     # Draft 7 and older tuples
            prefix, items = items, schema.get("additionalItems", True)
        count = _min(schema, "minItems")
        head = [self.value(sub, variant, depth + 1) for sub in prefix[:max(count, 0)]]
        contains = schema.get("contains")
        if contains is not None and not any(self.valid(contains, v) for v in head):
            if isinstance(contains, Mapping) and isinstance(items, Mapping):
                contains = _merge(items, contains)   # these items are subject to both
            head += [self.value(contains, variant + i, depth + 1)
                     for i in range(max(1, _min(schema, "minContains", 1)))]
        tail = [self.value(items, variant + i, depth + 1)
                for i in range(len(head), max(count, len(head)))]
        return head + tail


def _types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list) and kind:
        return [str(k) for k in kind]
    keys = set(schema)
    for guess, hints in (("object", {"properties", "required", "additionalProperties",
                                     "minProperties", "patternProperties"}),
                         ("array", {"items", "prefixItems", "minItems", "contains"}),
                         ("string", {"minLength", "maxLength", "pattern", "format"}),
                         ("number", {"minimum", "maximum", "exclusiveMinimum",
                                     "exclusiveMaximum", "multipleOf"})):
        if keys & hints:
            return [guess]
    return ["null"]


def _ref(schema: Any) -> str | None:
    return str(schema["$ref"]) if isinstance(schema, Mapping) and "$ref" in schema else None


def _property(schema: Mapping[str, Any], name: str) -> Any:
    props = schema.get("properties") or {}
    if name in props:
        return props[name]
    for pattern, sub in (schema.get("patternProperties") or {}).items():
        if re.search(pattern, name):
            return sub
    extra = schema.get("additionalProperties", True)
    if extra is False:
        raise SchemaUnsatisfiable(f"required property {name!r} is not allowed")
    return extra


def _min(schema: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = schema.get(key, default)
    return int(value) if isinstance(value, int | float) else default


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Both schemas' constraints in one, for the keywords this builder reads."""
    out = dict(base)
    for key, value in extra.items():
        if key in ("properties", "$defs", "patternProperties") and key in out:
            out[key] = {**out[key], **value}
        elif key == "required" and key in out:
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key in ("minimum", "minLength", "minItems", "minProperties") and key in out:
            out[key] = max(out[key], value)
        elif key in ("maximum", "maxLength", "maxItems", "maxProperties") and key in out:
            out[key] = min(out[key], value)
        else:
            out[key] = value
    return out


def _merge_all(schema: Mapping[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        if isinstance(part, Mapping):
            merged = _merge(merged, part)
    return merged
