"""Compile the Cedar parts of a policy bundle into reusable, parsed handles.

This module owns turning Cedar policy text (+ optional schema, + optional entities) into a
:class:`CompiledPolicies`: the parsed ``cedarpy.PolicySet`` that every decision reuses (parsing
is most of a naive ``is_authorized`` call), the stable policy ids operators see, each policy's
source text and line for ``explain``, and the bundle's entities split into a parsed base and an
overlay for the entity types that requests supply (``Node``, ``App``, ``Data``, ``Model``).

Stable policy ids: a policy's ``@id("...")`` annotation when present, else Cedar's positional
``policy0``, ``policy1``, ... in text order. Ids must be unique; templates (``?principal`` /
``?resource``) are refused because they authorize nothing until linked.

It must never do I/O, read the clock, or decide anything: it only parses and validates, and
raises :class:`~federation.errors.PolicyError` with Cedar's diagnostic, the line and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy

from federation.errors import PolicyError

__all__ = ["REQUEST_ENTITY_TYPES", "CompiledPolicies", "Overlay", "compile_policies"]

#: Entity types whose entities the engine builds per request from attested attributes. A
#: bundle may still list them (to give them ``parents`` or extra attributes); those entries are
#: merged into the per-request entity instead of being loaded as-is.
REQUEST_ENTITY_TYPES = frozenset({"Node", "App", "Data", "Model"})

_CEDAR_ID = re.compile(r"`(policy\d+)`")

Schema = str | Mapping[str, Any]
EntitiesDoc = Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Overlay:
    """What a bundle says about one request-supplied entity: extra attributes and parents."""

    attrs: Mapping[str, Any]
    parents: tuple[Mapping[str, str], ...]


@dataclass(frozen=True, slots=True)
class CompiledPolicies:
    """Parsed, validated Cedar state of one bundle; immutable and shared by every decision."""

    policy_set: cedarpy.PolicySet
    #: Cedar's positional id (``policy3``) -> stable id (``@id`` or the positional id).
    stable_ids: Mapping[str, str]
    #: stable id -> (first line of the policy in the bundle text, the policy's text).
    sources: Mapping[str, tuple[int, str]]
    #: Bundle entities of other types, parsed once; ``None`` when the bundle has none.
    base_entities: cedarpy.Entities | None
    #: Bundle entries for request-supplied entity types, keyed by ``(type, id)``.
    overlays: Mapping[tuple[str, str], Overlay]
    #: True when a policy or bundle entity names a ``Data`` entity by id. Only then can the
    #: per-request ``Data::"<request-id>"`` change a decision (and must be part of cache keys).
    data_ids_matter: bool

    def stable(self, cedar_id: str) -> str:
        return self.stable_ids.get(cedar_id, cedar_id)

    def rename_in(self, message: str) -> str:
        """Replace Cedar's positional ids in a diagnostic with the stable ids."""
        return _rename(message, self.stable_ids)


def compile_policies(
    policies: str, schema: Schema | None = None, entities: EntitiesDoc | None = None
) -> CompiledPolicies:
    """Parse and validate; raise :class:`PolicyError` naming the problem, its line and the fix."""
    statements = split_statements(policies)
    try:
        policy_set = cedarpy.PolicySet.from_str(policies)
        est = json.loads(cedarpy.policies_to_json_str(policies))
    except ValueError as exc:
        raise PolicyError(_locate_parse_error(policies, statements, str(exc))) from exc
    if est.get("templates"):
        raise PolicyError(
            "the policy text contains a template (a policy with ?principal or ?resource); "
            "bundles hold only concrete policies: write the principal or resource out"
        )
    static: dict[str, Any] = est.get("staticPolicies", {})
    if not static:
        raise PolicyError(
            "the policy text holds no policy, so every decision would deny; "
            'write at least one, e.g. permit(principal, action == Action::"infer", resource);'
        )
    cedar_ids = sorted(static, key=lambda pid: int(pid.removeprefix("policy")))
    stable_ids = _stable_ids(cedar_ids, static, statements)
    sources = _sources(cedar_ids, stable_ids, static, statements, policies)
    parsed_schema = _parse_schema(schema) if schema is not None else None
    if parsed_schema is not None:
        _validate(policies, parsed_schema, stable_ids, sources)
    base, overlays = _split_entities(entities or (), parsed_schema)
    return CompiledPolicies(
        policy_set=policy_set,
        stable_ids=stable_ids,
        sources=sources,
        base_entities=base,
        overlays=overlays,
        data_ids_matter=_names_data_entity(static) or _names_data_entity(list(entities or ())),
    )


def split_statements(text: str) -> list[tuple[int, str]]:
    """Split Cedar text into ``(first line, statement text)`` at each top-level ``;``.

    Cedar has only ``//`` comments and ``"..."`` strings with backslash escapes, and ``;`` ends
    a policy and appears nowhere else, so a small scanner is exact for well-formed text and
    still finds the start of the broken statement in malformed text.
    """
    out: list[tuple[int, str]] = []
    start: int | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if start is None and not c.isspace():
            start = i
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == ";" and start is not None:
            out.append((text.count("\n", 0, start) + 1, text[start : i + 1]))
            start = None
        i += 1
    if start is not None:
        out.append((text.count("\n", 0, start) + 1, text[start:].rstrip()))
    return out


def _locate_parse_error(text: str, statements: list[tuple[int, str]], message: str) -> str:
    for number, (line, statement) in enumerate(statements):
        try:
            cedarpy.PolicySet.from_str(statement)
        except ValueError as exc:
            return (
                f"Cedar policy text does not parse: policy #{number + 1} starting at line "
                f"{line}: {exc}; fix that policy and sign the bundle again"
            )
    return f"Cedar policy text does not parse: {message}; fix it and sign the bundle again"


def _stable_ids(
    cedar_ids: list[str], static: Mapping[str, Any], statements: list[tuple[int, str]]
) -> dict[str, str]:
    stable: dict[str, str] = {}
    seen: dict[str, str] = {}
    for index, cid in enumerate(cedar_ids):
        annotations = static[cid].get("annotations") or {}
        sid = annotations.get("id", cid)
        where = f"line {statements[index][0]}" if len(statements) == len(cedar_ids) else cid
        if not isinstance(sid, str) or not sid:
            raise PolicyError(f'the policy at {where} has an empty @id; give it @id("a-name")')
        if sid in seen:
            raise PolicyError(
                f"two policies are both named {sid!r} ({seen[sid]} and {where}); "
                "give each policy a unique @id"
            )
        seen[sid] = where
        stable[cid] = sid
    return stable


def _sources(
    cedar_ids: list[str],
    stable_ids: Mapping[str, str],
    static: Mapping[str, Any],
    statements: list[tuple[int, str]],
    text: str,
) -> dict[str, tuple[int, str]]:
    if len(statements) == len(cedar_ids):
        return {stable_ids[cid]: statements[i] for i, cid in enumerate(cedar_ids)}
    # The scanner disagreed with Cedar (should not happen): render each policy from its AST.
    out: dict[str, tuple[int, str]] = {}
    for cid in cedar_ids:
        one = {"staticPolicies": {cid: static[cid]}, "templates": {}, "templateLinks": []}
        out[stable_ids[cid]] = (0, cedarpy.policies_from_json_str(json.dumps(one)).strip())
    return out


def _parse_schema(schema: Schema) -> cedarpy.Schema:
    try:
        if isinstance(schema, str):
            return cedarpy.Schema.from_str(schema)
        return cedarpy.Schema.from_json_str(json.dumps(schema))
    except ValueError as exc:
        raise PolicyError(
            f"the bundle's Cedar schema does not parse: {exc}; fix the schema and sign again"
        ) from exc


def _validate(
    policies: str,
    schema: cedarpy.Schema,
    stable_ids: Mapping[str, str],
    sources: Mapping[str, tuple[int, str]],
) -> None:
    result = cedarpy.validate_policies(policies, schema)
    if result.validation_passed:
        return
    problems = []
    for error in result.errors:
        sid = stable_ids.get(error.policy_id, error.policy_id)
        line = sources.get(sid, (0, ""))[0]
        where = f"policy {sid} (line {line})" if line else f"policy {sid}"
        problems.append(f"{where}: {_rename(error.error, stable_ids)}")
    raise PolicyError(
        "the policies do not validate against the bundle's schema: "
        + "; ".join(problems)
        + "; fix the policies (or the schema) and sign the bundle again"
    )


def _rename(message: str, stable_ids: Mapping[str, str]) -> str:
    return _CEDAR_ID.sub(lambda m: f"`{stable_ids.get(m.group(1), m.group(1))}`", message)


def _split_entities(
    entities: EntitiesDoc, schema: cedarpy.Schema | None
) -> tuple[cedarpy.Entities | None, dict[tuple[str, str], Overlay]]:
    base: list[Mapping[str, Any]] = []
    overlays: dict[tuple[str, str], Overlay] = {}
    for entity in entities:
        uid = entity.get("uid") if isinstance(entity, Mapping) else None
        if not isinstance(uid, Mapping) or not isinstance(uid.get("type"), str):
            raise PolicyError(
                f"bundle entity {entity!r} has no uid {{type, id}}; "
                "write entities in Cedar's JSON entity format"
            )
        if uid["type"] in REQUEST_ENTITY_TYPES:
            overlays[(uid["type"], str(uid.get("id")))] = Overlay(
                attrs=dict(entity.get("attrs") or {}),
                parents=tuple(entity.get("parents") or ()),
            )
        else:
            base.append(entity)
    try:
        # Load now so bad JSON or schema violations surface at signing and reading time rather
        # than as a deny on every later decision. Overlays are checked without the schema: they
        # carry only parents and extras, the attested attributes are added per request.
        parsed = cedarpy.Entities.from_json_str(json.dumps(base), schema) if base else None
        overlay_doc = [
            {"uid": {"type": t, "id": i}, "attrs": dict(o.attrs), "parents": list(o.parents)}
            for (t, i), o in overlays.items()
        ]
        cedarpy.Entities.from_json_str(json.dumps(overlay_doc))
    except ValueError as exc:
        raise PolicyError(
            f"the bundle's entities do not load: {exc}; fix the entities and sign again"
        ) from exc
    return parsed, overlays


def _names_data_entity(node: Any) -> bool:
    if isinstance(node, Mapping):
        if node.get("type") == "Data" and "id" in node:
            return True
        return any(_names_data_entity(v) for v in node.values())
    if isinstance(node, list | tuple):
        return any(_names_data_entity(v) for v in node)
    return False
