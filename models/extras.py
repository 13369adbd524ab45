"""Optional parts of Outpost (pip extras) and the one-line error when one is missing.

Owns the map from an optional import to the extra that installs it. A plain
``pip install outpost`` serves models, federates and audits; these are left out because an
edge box rarely needs them and they are large:

====== ==================== ================================================================
extra  module               needed for
====== ==================== ================================================================
ray    ``ray``              ``[ray] address`` (models on a Ray cluster), ``batch run --ray``
batch  ``pyarrow``          ``outpost batch run`` (Parquet in and out)
otel   ``opentelemetry``    ``[otel] endpoint``: spans over OTLP/HTTP
====== ==================== ================================================================

Must never import the optional modules itself: ``find_spec`` answers without loading them.
"""

from __future__ import annotations

import importlib.util

from models.errors import MissingExtra

__all__ = ["EXTRAS", "MissingExtra", "for_module", "require"]

# top-level module -> the extra that installs it
EXTRAS: dict[str, str] = {"ray": "ray", "pyarrow": "batch", "opentelemetry": "otel"}


def message(module: str, needed_for: str) -> str:
    extra = EXTRAS.get(module.split(".")[0], module)
    return (f"{needed_for} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'outpost[{extra}]'")


def require(module: str, needed_for: str) -> None:
    """Raise :class:`MissingExtra` naming the extra unless ``module`` can be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtra(message(module, needed_for))


def for_module(exc: ModuleNotFoundError) -> str | None:
    """The one-line message for an optional module that failed to import, else None."""
    root = (exc.name or "").split(".")[0]
    if root not in EXTRAS:
        return None
    return message(root, "this command")
