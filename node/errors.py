"""The one exception tree of ``node``: the operator's mistakes apart from internal faults.

Every error a node raises on purpose derives from :class:`NodeError`, so the CLI catches one
class (plus the roots of ``federation`` and ``models``) and the admin API can tell a request
it should refuse (400) from a fault of its own (500)::

    NodeError
    ├── OperatorError          the operator's input or setup is wrong: fix it and retry
    │   ├── ConfigError        outpost.toml or a setting in it (also a ValueError)
    │   ├── NodeKeyError       node.key missing, unreadable, not Ed25519
    │   ├── EnrollmentError    node.crt / federation.crt missing, foreign or inconsistent
    │   ├── AuthorityError     the authority directory (`outpost federation ...`)
    │   ├── Busy               another process holds the data directory
    │   ├── StartupError       the daemon cannot start (CLI exit code 3)
    │   ├── DaemonError        the running daemon refused the request, or is not running
    │   ├── ModelNotFound      no such model or version here (also a LookupError; HTTP 404)
    │   ├── ModelExists        name:version is already held
    │   ├── PullError          a model pull cannot be done or did not verify
    │   ├── BatchError         a batch job's input or output (also a ValueError)
    │   └── BundleError        a sync bundle cannot be written or imported (also a ValueError)
    └── NodeFault              not the operator's doing: the node's own state or environment
        ├── StoreError         the database cannot be opened or used
        ├── AuditError         the audit log cannot append or answer (closed, damaged)
        └── DiscoveryError     mDNS could not start or advertise

Errors of the cores keep their own trees: ``federation.errors.FederationError`` (a document or
peer did not verify) and ``models.ModelError`` (a model file or tensor is wrong). At the
admin API both are the operator's input, so they are refused with 400 as well.

Every message is one line that names the fix. Must never: wrap a bug (``TypeError``,
``KeyError`` ...) in one of these — a bug should surface as a 500 and a traceback in the log.
"""

from __future__ import annotations

__all__ = ["NodeError", "NodeFault", "OperatorError", "StartupError"]


class NodeError(Exception):
    """Base of every error ``node`` raises on purpose; the message names the fix."""


class OperatorError(NodeError):
    """The operator's input, command or setup is wrong; changing it makes the call succeed.

    The admin API answers these with 400; the CLI prints the message and exits 1."""


class NodeFault(NodeError):
    """Something in the node itself failed (database, audit log, network environment).

    Retrying may help, the operator's input would not; the admin API answers 500."""


class StartupError(OperatorError):
    """The daemon cannot start; the message is one line that names the fix (exit code 3)."""
