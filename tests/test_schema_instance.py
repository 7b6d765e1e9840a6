"""gateway/schema_instance: a valid instance of any JSON schema the simulator may be asked for.

Property: for schemas Hypothesis builds from the keywords structured output uses (objects with
required and optional properties, additionalProperties false, arrays with minItems, enums,
const, anyOf/oneOf, $ref into $defs, string formats and lengths, bounded numbers, nullable
types), `instance` returns a value that jsonschema accepts, formats checked. Then the schemas
pydantic and the openai SDK really send (`model_json_schema()`, and the strict schema of
`chat.completions.parse(Model)`), where the instance must also parse back into the model.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal, Optional

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib._parsing._completions import type_to_response_format_param
from pydantic import BaseModel, Field, HttpUrl

from gateway.simulator.schema_instance import SchemaUnsatisfiable, instance

Schema = dict[str, Any]
FORMATS = ["date-time", "date", "time", "email", "uuid", "uri", "ipv4", "ipv6", "hostname",
           "duration"]
PATTERNS = [r"^[A-Z]{3}-\d{4}$", r"^(red|green)+$", r"^#[0-9a-f]{6}$", r"^\w+@\w+\.com$", r"x"]


def check(schema: Schema | bool) -> Any:
    value = instance(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls(schema, format_checker=cls.FORMAT_CHECKER).validate(value)
    json.dumps(value)          # plain JSON data, as an answer's content must be
    return value


# ---- generated schemas ----------------------------------------------------------------------

@st.composite
def integers(draw: st.DrawFn) -> Schema:
    schema: Schema = {"type": "integer"}
    low = draw(st.none() | st.integers(-1000, 1000))
    if low is not None:
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        width = draw(st.integers(2, 100))
        schema["maximum"] = (low if low is not None else draw(st.integers(-1000, 1000))) + width
    if draw(st.booleans()):
        schema["multipleOf"] = draw(st.integers(1, 3))   # a width >= 2 holds a multiple of <= 3
    return schema


@st.composite
def numbers(draw: st.DrawFn) -> Schema:
    schema: Schema = {"type": "number"}
    low = draw(st.none() | st.floats(-1e6, 1e6))
    if low is not None:
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        top = (low if low is not None else draw(st.floats(-1e6, 1e6))) + draw(st.floats(1, 1e3))
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = top
    if draw(st.booleans()):
        schema["multipleOf"] = draw(st.sampled_from([0.5, 0.25, 0.1, 0.01]))
    return schema


@st.composite
def strings(draw: st.DrawFn) -> Schema:
    choice = draw(st.sampled_from(["plain", "format", "pattern"]))
    if choice == "format":
        return {"type": "string", "format": draw(st.sampled_from(FORMATS))}
    if choice == "pattern":
        return {"type": "string", "pattern": draw(st.sampled_from(PATTERNS))}
    low = draw(st.integers(0, 20))
    schema: Schema = {"type": "string", "minLength": low}
    if draw(st.booleans()):
        schema["maxLength"] = low + draw(st.integers(0, 5))
    return schema


scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5)
enums = st.lists(scalars, min_size=1, max_size=4, unique_by=lambda v: json.dumps(v)) \
    .map(lambda values: {"enum": values})
consts = scalars.map(lambda value: {"const": value})
typed_leaves = integers() | numbers() | strings() | st.just({"type": "boolean"})
nullable = typed_leaves.map(lambda s: {**s, "type": [s["type"], "null"]})
leaves = typed_leaves | nullable | enums | consts | st.just({"type": "null"}) | st.just({})


def containers(children: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
    return objects(children) | arrays(children) \
        | st.lists(children, min_size=1, max_size=3).map(lambda bs: {"anyOf": bs}) \
        | one_ofs()


@st.composite
def objects(draw: st.DrawFn, children: st.SearchStrategy[Schema]) -> Schema:
    props = draw(st.dictionaries(st.sampled_from("abcdefgh"), children, max_size=4))
    required = draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
    schema: Schema = {"type": "object", "properties": props, "required": required}
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    return schema


@st.composite
def arrays(draw: st.DrawFn, children: st.SearchStrategy[Schema]) -> Schema:
    low = draw(st.integers(0, 4))
    return {"type": "array", "items": draw(children), "minItems": low,
            "maxItems": low + draw(st.integers(0, 3))}


@st.composite
def one_ofs(draw: st.DrawFn) -> Schema:
    """oneOf over distinct types (integer and number overlap, so only one of them)."""
    makers = {"integer": integers(), "string": strings(), "boolean": st.just({"type": "boolean"}),
              "null": st.just({"type": "null"}), "object": st.just({"type": "object"}),
              "array": st.just({"type": "array"})}
    kinds = draw(st.lists(st.sampled_from(sorted(makers)), min_size=1, max_size=4, unique=True))
    return {"oneOf": [draw(makers[kind]) for kind in kinds]}


@st.composite
def schemas(draw: st.DrawFn) -> Schema:
    """A tree of keywords, some of whose leaves are $refs into the root's $defs."""
    defs = draw(st.dictionaries(st.sampled_from(["A", "B", "C"]),
                                st.recursive(leaves, containers, max_leaves=6), max_size=3))
    refs = [{"$ref": f"#/$defs/{name}"} for name in defs]
    with_refs = leaves | st.sampled_from(refs) if refs else leaves
    body = draw(st.recursive(with_refs, containers, max_leaves=12))
    return {**body, "$defs": defs} if defs else body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schemas())
def test_any_generated_schema_gets_a_valid_instance(schema: Schema) -> None:
    check(schema)


# ---- what clients really send ---------------------------------------------------------------

class Color(StrEnum):
    red = "red"
    green = "green"


class Item(BaseModel):
    sku: Annotated[str, Field(pattern=r"^[A-Z]{3}-\d{4}$")]
    name: Annotated[str, Field(min_length=3, max_length=12)]
    qty: Annotated[int, Field(ge=1, le=5)]
    price: Annotated[float, Field(gt=0, lt=100, multiple_of=0.01)]
    tags: Annotated[list[str], Field(min_length=2)]


class Node(BaseModel):
    value: int
    children: list[Node]
    parent: Optional[Node] = None  # noqa: UP045 - the Optional spelling is what users write


class Order(BaseModel):
    id: uuid.UUID
    placed: dt.datetime
    due: dt.date
    color: Color
    kind: Literal["retail", "wholesale"]
    items: Annotated[list[Item], Field(min_length=1)]
    note: str | None
    site: HttpUrl | None = None
    tree: Node
    counts: dict[str, int]


@pytest.mark.parametrize("model", [Order, Item, Node])
def test_pydantic_schemas_get_instances_that_parse_back(model: type[BaseModel]) -> None:
    value = check(model.model_json_schema())
    model.model_validate_json(json.dumps(value))


@pytest.mark.parametrize("model", [Order, Item, Node])
def test_the_strict_schema_of_chat_completions_parse_gets_an_instance(
        model: type[BaseModel]) -> None:
    sent = type_to_response_format_param(model)
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    schema = sent["json_schema"]["schema"]
    value = check(schema)
    model.model_validate_json(json.dumps(value))


def test_recursion_stops_at_the_first_optional_reentry() -> None:
    # The root is Node's schema inlined; its `parent` enters $defs/Node, whose own `parent`
    # re-enters the definition being built, and stops there.
    schema = type_to_response_format_param(Node)["json_schema"]["schema"]
    leaf = {"value": 0, "children": [], "parent": None}
    assert check(schema) == {"value": 0, "children": [], "parent": leaf}


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "string", "pattern": r"^[a-z]{2}$"}, "minItems": 5,
     "uniqueItems": True},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 4},
     "minItems": 5, "uniqueItems": True},
    {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "items": {"type": "object", "properties": {"d": {"format": "date"}},
                                "required": ["d"]}, "minItems": 4, "uniqueItems": True},
    {"type": "array", "items": {"type": ["string", "integer"]}, "minItems": 4,
     "uniqueItems": True},
])
def test_unique_items_differ(schema: Schema) -> None:
    check(schema)


@pytest.mark.parametrize(("schema", "expected"), [
    # Overlapping oneOf branches: only a value matching exactly one is valid.
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 0.5),
    ({"oneOf": [{"type": "string", "maxLength": 3}, {"type": "string", "minLength": 2}]},
     "text"),
    # 0.07 / 0.01 is 7.000000000000001 in floats, which jsonschema rejects: next one up.
    ({"type": "number", "multipleOf": 0.01, "minimum": 0.07}, 0.08),
    ({"type": "integer", "minimum": 3, "exclusiveMinimum": True,
      "$schema": "http://json-schema.org/draft-04/schema#"}, 4),
    ({"type": "array", "items": [{"type": "integer"}, {"type": "string"}], "minItems": 2,
      "$schema": "http://json-schema.org/draft-07/schema#"}, [0, "text"]),
    ({"type": "object", "required": ["x"], "additionalProperties": {"type": "boolean"}},
     {"x": True}),
    ({"allOf": [{"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]},
                {"properties": {"b": {"const": 2}}, "required": ["b"]}]}, {"a": 1, "b": 2}),
    ({"type": "string", "examples": ["Paris"]}, "Paris"),
    (True, None),
])
def test_specific_keywords(schema: Schema | bool, expected: Any) -> None:
    assert check(schema) == expected


@pytest.mark.parametrize("schema", [
    False,
    {"type": "integer", "minimum": 5, "maximum": 4},
    {"not": {}},
    {"type": "object", "required": ["x"], "additionalProperties": False},
    {"enum": [1, 2], "type": "string"},
    {"$ref": "https://example.com/elsewhere.json"},
    {"$defs": {"L": {"type": "object", "properties": {"next": {"$ref": "#/$defs/L"}},
                     "required": ["next"]}}, "$ref": "#/$defs/L"},   # endless by definition
])
def test_unsatisfiable_schemas_raise(schema: Schema | bool) -> None:
    with pytest.raises(SchemaUnsatisfiable):
        instance(schema)


def test_an_exclusive_bound_of_one_is_a_number_not_a_draft4_flag() -> None:
    """Found by the property test above: `1 == True`, so a bound of 1 was read as Draft 4's
    boolean flag and the bound lost."""
    for schema in ({"type": "integer", "exclusiveMinimum": 1},
                   {"oneOf": [{"type": "integer", "exclusiveMinimum": 1}]},
                   {"type": "number", "exclusiveMinimum": 1, "maximum": 1.5},
                   {"type": "integer", "exclusiveMaximum": 1}):
        jsonschema.validate(instance(schema), schema)
