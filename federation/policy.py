"""Policy: signed Cedar bundles and the decisions made with them (DESIGN §4).

The public face of three small modules, re-exported here so callers import from one place:

* ``policy_bundle`` — the signed bundle file format, signing, verification, no-rollback;
* ``policy_cedar``  — compiling Cedar text/schema/entities once into reusable handles;
* ``policy_engine`` — the entity model contract and fail-closed decisions.

Like all of ``federation``, none of it does I/O or reads the clock.
"""

from __future__ import annotations

from federation.policy_bundle import (
    BUNDLE_FORMAT,
    MAX_BUNDLE_BYTES,
    PolicyBundle,
    authority_key_id,
    read_bundle,
    sign_bundle,
)
from federation.policy_engine import (
    DEFAULT_CACHE_SIZE,
    NO_BUNDLE_REASON,
    TIERS,
    DataAttrs,
    Decision,
    ExplainedPolicy,
    Explanation,
    NodeAttrs,
    PolicyEngine,
)

__all__ = [
    "BUNDLE_FORMAT",
    "DEFAULT_CACHE_SIZE",
    "MAX_BUNDLE_BYTES",
    "NO_BUNDLE_REASON",
    "TIERS",
    "DataAttrs",
    "Decision",
    "ExplainedPolicy",
    "Explanation",
    "NodeAttrs",
    "PolicyBundle",
    "PolicyEngine",
    "authority_key_id",
    "read_bundle",
    "sign_bundle",
]
