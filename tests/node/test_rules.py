"""One rule each, tested to agree wherever a copy has to exist.

Invariants: the node id a config accepts is exactly the node id a certificate may carry
(``node.config`` delegates to ``federation.identity``); the model names and versions a sync
bundle accepts are exactly those ``models.names`` accepts (``federation`` does not import
``models``, so the pattern is held twice and compared here)."""

from __future__ import annotations

import pytest

from federation import syncbundle
from federation.errors import MalformedInput
from federation.identity import validate_federation_name
from federation.identity import validate_node_id as certificate_rule
from models.errors import InvalidName
from models.names import NAME_PATTERN, VERSION_PATTERN, validate_name, validate_version
from node.config import ConfigError, default_node_id
from node.config import validate_node_id as config_rule

NODE_IDS = [
    "a", "edge-1", "node-a", "0", "a" * 63,  # valid
    "", "-a", "a-", "Edge-1", "a.b", "a_b", "a b", "a" * 64, "é", "a\n", "node/a",  # invalid
]


def _accepts(rule: object, value: str, error: type[Exception]) -> bool:
    try:
        rule(value)  # type: ignore[operator]
    except error:
        return False
    return True


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_config_and_certificate_agree_on_node_ids(node_id: str) -> None:
    assert _accepts(config_rule, node_id, ConfigError) == _accepts(
        certificate_rule, node_id, MalformedInput)


def test_node_id_rule_accepts_and_refuses() -> None:
    assert config_rule("edge-1") == "edge-1"
    with pytest.raises(ConfigError, match="starting and ending with a letter or digit"):
        config_rule("edge-")
    with pytest.raises(MalformedInput):
        certificate_rule("edge-7.site-b")  # a node id is one DNS label
    assert validate_federation_name("acme.example") == "acme.example"  # federations may dot
    assert _accepts(certificate_rule, default_node_id(), MalformedInput)


MODEL_NAMES = [
    "digits", "a", "A.b_c-d", "x" * 128, "1.0",  # valid
    "", ".hidden", "a..b", "a/b", "a:b", "a b", "x" * 129, "-a", "a\n", "ü",  # invalid
]


def test_sync_bundle_holds_the_model_name_patterns_of_models() -> None:
    assert syncbundle.MODEL_NAME_PATTERN == NAME_PATTERN
    assert syncbundle.MODEL_VERSION_PATTERN == VERSION_PATTERN


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sync_bundle_and_models_agree_on_names_and_versions(name: str) -> None:
    sha = "0" * 64
    as_name = _accepts(lambda n: syncbundle._model_to_json(syncbundle.ModelRef(n, "1", sha, 1)),
                       name, ValueError)
    assert as_name == _accepts(validate_name, name, InvalidName)
    if len(name) <= 128:
        as_version = _accepts(
            lambda v: syncbundle._model_to_json(syncbundle.ModelRef("m", v, sha, 1)), name,
            ValueError)
        assert as_version == _accepts(validate_version, name, InvalidName)
