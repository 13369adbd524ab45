"""Node operations the CLI invokes, one function each.

Each works whether the daemon runs or not: online it goes through the admin socket (so the
daemon loads or unloads models live); offline it opens the store itself under the data-directory
lock, through the same ``ModelHost`` code the daemon uses.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from models import SAMPLE_MODEL
from models.datatypes import from_oip
from node import config as cfg
from node import control
from node.client import DaemonError, connect
from node.durable import private_dir
from node.keys import create_key, load_key
from node.modelhost import ModelHost
from node.offline import OfflineNode, run_offline

T = TypeVar("T")

SAMPLE_NAME = "digits"


@dataclass
class InitResult:
    node_id: str
    created: bool
    messages: list[str] = field(default_factory=list)


def _offline(data_dir: Path, holder: str, fn: Callable[[ModelHost], Awaitable[T]]) -> T:
    """Run ``fn`` on the store with no daemon: under the data-dir lock, audited like online."""

    async def on_host(node: OfflineNode) -> T:
        return await fn(node.host)

    return run_offline(data_dir, holder, on_host)


def init_node(data_dir: Path, *, name: str | None = None, sample: bool = True) -> InitResult:
    private_dir(data_dir)  # 0700 also when the directory already existed (e.g. made by hand)
    messages: list[str] = []
    config_path = data_dir / cfg.CONFIG_FILE
    if config_path.exists():
        config = cfg.load(data_dir)
        if name and name != config.node.name:
            raise cfg.ConfigError(
                f"{data_dir} already holds node {config.node.name!r}; a node's id cannot change "
                "(its certificate binds it): use another --data-dir for a new node"
            )
        created_config = False
    else:
        node_id = cfg.validate_node_id(name) if name else cfg.default_node_id()
        config = cfg.Config().replace("node", name=node_id)
        cfg.save(data_dir, config)
        created_config = True
    _, created_key = create_key(data_dir)
    if created_key:
        messages.append(f"created node key {data_dir / 'node.key'} (mode 0600)")
    else:
        messages.append(f"node key {data_dir / 'node.key'} already exists; kept it")
    if created_config:
        messages.append(f"wrote config {config_path}")
    else:
        messages.append(f"config {config_path} already exists; kept it")

    async def setup(host: ModelHost) -> str | None:
        if not (sample and config.models.install_sample):
            return None
        if await host.store.get_meta("sample_installed"):
            return None
        record = await host.add(SAMPLE_MODEL, SAMPLE_NAME, "1")
        await host.store.set_meta("sample_installed", "1")
        return record.ref

    if control.daemon_running(data_dir):
        messages.append("daemon is running; database and models left as they are")
    else:
        added = _offline(data_dir, "outpost init", setup)
        if added:
            messages.append(f"added sample model {added}")
    messages.append(f"node {config.node.name} initialised in {data_dir}")
    return InitResult(config.node.name, created_key or created_config, messages)


def node_status(data_dir: Path) -> dict[str, Any]:
    config = cfg.load(data_dir)
    client = connect(data_dir)
    if client is not None:
        with client:
            info: dict[str, Any] = client.request("GET", "/status")
        info["running"] = True
        return info
    load_key(data_dir)  # surfaces a missing or unreadable key
    from node.probe import probe

    async def listing(host: ModelHost) -> list[dict[str, Any]]:
        return [
            {**r.to_json(), "provider": None, "queue_depth": None,
             "dynamic_batching": r.signature.batch_dynamic}
            for r in await host.list()
        ]

    return {
        "node_id": config.node.name,
        "running": False,
        "data_dir": str(data_dir),
        "models": _offline(data_dir, "outpost status", listing),
        "capabilities": probe(data_dir),
    }


def models_add(data_dir: Path, path: Path, name: str, version: str | None,
               pulled_from: str | None = None) -> dict[str, Any]:
    client = connect(data_dir)
    if client is not None:
        with client:
            result: dict[str, Any] = client.request(
                "POST", "/models", {"path": str(path), "name": name, "version": version,
                                    "pulled_from": pulled_from},
            )
            return result

    async def add(host: ModelHost) -> dict[str, Any]:
        return (await host.add(path, name, version, pulled_from=pulled_from)).to_json()

    return _offline(data_dir, "outpost models add", add)


def models_pull(data_dir: Path, ref: str, from_node: str | None,
                progress: Any = None) -> dict[str, Any]:
    """Have the daemon fetch ``name[:version]`` from a peer that holds it and may give it to
    us, verified against the holder's signed advert, then add it (``node.pull``). The daemon
    does it because it holds the verified adverts, the revocation list in force and the one
    owner of peer connections; ``progress`` is not reported across the admin socket."""
    from models import parse_ref

    parse_ref(ref)  # a bad reference fails here with the model-name rule's message
    client = connect(data_dir)
    if client is None:
        raise DaemonError(f"no daemon is running on {data_dir}; `outpost run` first (it knows "
                          "which peers hold the model)")
    with client:
        result: dict[str, Any] = client.request("POST", "/models/pull",
                                                {"ref": ref, "from": from_node})
    return result


def models_list(data_dir: Path) -> list[dict[str, Any]]:
    client = connect(data_dir)
    if client is not None:
        with client:
            status = client.request("GET", "/status")
            served = {(m["name"], m["version"]): m for m in status["models"]}
            records: list[dict[str, Any]] = client.request("GET", "/models")
        for r in records:
            live = served.get((r["name"], r["version"]), {})
            r["provider"] = live.get("provider")
            r["execution"] = live.get("execution")
        return records

    async def listing(host: ModelHost) -> list[dict[str, Any]]:
        return [r.to_json() for r in await host.list()]

    return _offline(data_dir, "outpost models list", listing)


def models_rm(data_dir: Path, ref: str) -> list[dict[str, Any]]:
    client = connect(data_dir)
    if client is not None:
        with client:
            removed: list[dict[str, Any]] = client.request("DELETE", f"/models/{ref}")
            return removed

    async def rm(host: ModelHost) -> list[dict[str, Any]]:
        return [r.to_json() for r in await host.remove(ref)]

    return _offline(data_dir, "outpost models rm", rm)


def _load_inputs(text: str) -> Any:
    path = Path(text)
    if not text.lstrip().startswith(("{", "[")) and path.exists():
        if path.suffix == ".npy":
            try:
                return np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise DaemonError(f"--input {path} is not a NumPy .npy array ({exc}); save it "
                                  "with numpy.save") from None
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DaemonError(
            f"--input is neither an existing file nor JSON ({exc}); pass a .json/.npy file or "
            'JSON like \'{"input": [[0.0, ...]]}\''
        ) from None


def infer(data_dir: Path, name: str, input_text: str, version: str | None,
          data_class: str | None, jurisdiction: str | None,
          token: str | None = None) -> dict[str, Any]:
    info = control.read_runtime(data_dir)
    if info is None:
        raise DaemonError(f"no daemon is running on {data_dir}; start it with `outpost run`")
    base = f"{info.app_url}/v2/models/{name}" + (f"/versions/{version}" if version else "")
    raw = _load_inputs(input_text)
    auth = {"authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=60.0, headers=auth) as http:
        if isinstance(raw, dict) and "inputs" in raw:
            body = raw
        else:
            meta = http.get(base)
            if meta.status_code != 200:
                raise DaemonError(meta.json().get("error", meta.text), meta.status_code)
            specs = meta.json()["inputs"]
            if isinstance(raw, (np.ndarray, list)):
                if len(specs) != 1:
                    raise DaemonError(
                        f"model {name} has {len(specs)} inputs; give them by name: "
                        '{"' + '": ..., "'.join(s["name"] for s in specs) + '": ...}'
                    )
                raw = {specs[0]["name"]: raw}
            inputs = []
            for spec in specs:
                if spec["name"] not in raw:
                    raise DaemonError(f"input {spec['name']!r} is missing from --input")
                array = np.asarray(raw[spec["name"]])
                datatype = spec["datatype"]
                if datatype != "BYTES":
                    array = array.astype(from_oip(datatype).dtype)
                inputs.append({"name": spec["name"], "datatype": datatype,
                               "shape": list(array.shape), "data": array.flatten().tolist()})
            body = {"inputs": inputs}
        params = body.setdefault("parameters", {})
        if data_class:
            params["outpost.data_class"] = data_class
        if jurisdiction:
            params["outpost.jurisdiction"] = jurisdiction
        response = http.post(f"{base}/infer", content=json.dumps(body).encode(),
                             headers={"content-type": "application/json"})
    data: dict[str, Any] = response.json()
    if response.status_code != 200:
        raise DaemonError(data.get("error", response.text), response.status_code)
    return data
