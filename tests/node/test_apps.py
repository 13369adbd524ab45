"""App identity on real daemons: tokens through the CLI, live revocation, tritonclient with a
token, uid mapping on the app socket, both auth modes, and every bad credential a clear
401/403 with an audit entry."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, DaemonProc, outpost, start_daemon, write_config

pytestmark = pytest.mark.integration

SAMPLE = json.loads((ROOT / "models" / "sample" / "digits.json").read_text())
ROWS = np.asarray([e["input"] for e in SAMPLE["examples"][:2]], dtype=np.float32)
LABELS = [e["label"] for e in SAMPLE["examples"][:2]]


def body() -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64],
                        "data": ROWS.flatten().tolist()}]}


def audit(d: Path, *extra: str) -> list[dict[str, Any]]:
    lines = outpost("audit", "tail", "-n", "500", "--json", *extra, data_dir=d).stdout
    return [json.loads(line)["entry"] for line in lines.splitlines()]


def tokens(d: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in json.loads(outpost("token", "list", "--json", data_dir=d).stdout)}


def add_token(d: Path, name: str, *extra: str) -> str:
    result = outpost("token", "add", name, *extra, data_dir=d)
    assert "shown only now" in result.stderr
    return result.stdout.strip()


def metric(daemon: DaemonProc, app: str, outcome: str) -> float:
    with daemon.http() as http:
        text = http.get("/metrics").text
    prefix = f'outpost_app_requests_total{{app="{app}",outcome="{outcome}"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def test_token_lifecycle_tritonclient_and_live_revocation(node_dir: Path) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    # offline: no daemon yet, straight to the store
    secret = add_token(node_dir, "camera-svc", "--attr", "purpose=diagnosis", "--attr",
                       "team=radiology", "--expires", "90d")
    assert secret.startswith("opt_")
    listed = tokens(node_dir)["camera-svc"]
    assert listed["state"] == "active" and listed["attrs"] == {"purpose": "diagnosis",
                                                                "team": "radiology"}
    assert listed["expires"] - listed["created"] == 90 * 86400 and listed["last_used"] is None
    assert secret not in json.dumps(listed) and "secret" not in listed
    dup = outpost("token", "add", "camera-svc", data_dir=node_dir, check=False)
    assert dup.returncode == 1 and "revoke it first" in dup.stderr
    daemon = start_daemon(node_dir)
    try:
        client = httpclient.InferenceServerClient(daemon.hostport)
        headers = {"Authorization": f"Bearer {secret}"}
        for binary in (False, True):
            tensor = httpclient.InferInput("input", [2, 64], "FP32")
            tensor.set_data_from_numpy(ROWS, binary_data=binary)
            wanted = [httpclient.InferRequestedOutput("label", binary_data=binary)]
            result = client.infer("digits", [tensor], outputs=wanted, headers=headers)
            assert result.as_numpy("label").tolist() == LABELS
        assert client.get_model_metadata("digits", headers=headers)["name"] == "digits"
        # online: the running daemon takes a new token at once
        other = add_token(node_dir, "batch-job")
        with daemon.http() as http:
            r = http.post("/v2/models/digits/infer", json=body(),
                          headers={"Authorization": f"Bearer {other}"})
            assert r.status_code == 200, r.text
        assert tokens(node_dir)["camera-svc"]["last_used"] is not None  # flushed on list
        # revoked on the running daemon: the very next request is refused
        revoked = outpost("token", "revoke", "camera-svc", data_dir=node_dir)
        assert "revoked token" in revoked.stdout
        tensor = httpclient.InferInput("input", [2, 64], "FP32")
        tensor.set_data_from_numpy(ROWS, binary_data=True)
        with pytest.raises(InferenceServerException, match="revoked"):
            client.infer("digits", [tensor], headers=headers)
        client.close()
        assert tokens(node_dir)["camera-svc"]["state"] == "revoked"
        assert metric(daemon, "camera-svc", "ok") == 2
        assert metric(daemon, "camera-svc", "unauthenticated") == 1
        assert metric(daemon, "batch-job", "ok") == 1
        mine = audit(node_dir, "--app", "camera-svc")
        infers = [e for e in mine if e["kind"] == "infer"]
        assert [e["outcome"] for e in infers] == ["admitted", "admitted", "unauthenticated"]
        assert infers[0]["caller"] == "app:camera-svc"
        assert infers[0]["detail"]["token"] == listed["token_id"]
        assert "revoked" in infers[-1]["reason"]
        assert [e["kind"] for e in mine if e["kind"].startswith("token.")] == [
            "token.add", "token.revoke"]
        issued = next(e for e in mine if e["kind"] == "token.add")
        assert json.loads(issued["detail"]["attrs"]) == {"purpose": "diagnosis",
                                                         "team": "radiology"}
        assert all(e["detail"].get("app") == "camera-svc" for e in mine)
    finally:
        daemon.stop()
    # offline revoke, and the trail verifies with everything in it
    outpost("token", "revoke", "batch-job", data_dir=node_dir)
    assert tokens(node_dir)["batch-job"]["state"] == "revoked"
    assert "ok:" in outpost("audit", "verify", data_dir=node_dir).stdout


def test_anonymous_in_both_modes_and_every_bad_credential(node_dir: Path) -> None:
    expiring = add_token(node_dir, "short-lived", "--expires", "1s")
    edited = add_token(node_dir, "edited", "--attr", "purpose=billing")
    db = sqlite3.connect(node_dir / "outpost.db")
    db.execute("""UPDATE app_token SET attrs='{"purpose":"diagnosis"}' WHERE name='edited'""")
    db.commit()
    db.close()
    daemon = start_daemon(node_dir)  # optional mode (the default)
    try:
        with daemon.http() as http:
            r = http.post("/v2/models/digits/infer", json=body())
            assert r.status_code == 200, r.text
            assert http.get("/v2/models/digits").status_code == 200
            time.sleep(1.1)  # let the 1 s token expire (not a timing assertion)
            cases = {
                "Bearer": "malformed",
                "Basic dXNlcjpwYXNz": "scheme 'Basic' is not supported",
                "Bearer " + "a" * 4000: "too long",
                "Bearer opt_0123456789ab_" + "x" * 43: "not known on this node",
                f"Bearer {expiring}": "expired",
                f"Bearer {edited}": "integrity check",
            }
            for value, why in cases.items():
                r = http.post("/v2/models/digits/infer", json=body(),
                              headers={"Authorization": value})
                assert r.status_code == 401, (value[:30], r.text)
                assert why in r.json()["error"], r.text
                assert r.headers["www-authenticate"].startswith("Bearer")
        entries = [e for e in audit(node_dir) if e.get("outcome") == "unauthenticated"]
        assert len(entries) == len(cases)
        assert {e["kind"] for e in entries} == {"infer"}
        assert sum(e["caller"] == "unknown@127.0.0.1" for e in entries) == 4
        assert {e["caller"] for e in entries} >= {"app:short-lived", "app:edited"}
        anonymous = [e for e in audit(node_dir, "--app", "anonymous") if e["kind"] == "infer"]
        assert anonymous and anonymous[-1]["caller"] == "app:anonymous"
        assert metric(daemon, "unknown", "unauthenticated") == 4
        # A source that keeps failing is throttled (429, Retry-After) without flooding the
        # trail; requests without credentials are not failures and still pass.
        statuses = []
        with daemon.http() as http:
            for _ in range(300):  # the burst is 20, one more earned per second
                statuses.append(http.post("/v2/models/digits/infer", json=body(),
                                          headers={"Authorization": "Bearer nope"}))
                if statuses[-1].status_code != 401:
                    break
            extra = [http.post("/v2/models/digits/infer", json=body(),
                               headers={"Authorization": "Bearer nope"}) for _ in range(3)]
            assert http.post("/v2/models/digits/infer", json=body()).status_code == 200
        assert statuses[-1].status_code == 429 and len(statuses) > 14
        assert "too many failed authentications" in statuses[-1].json()["error"]
        assert int(statuses[-1].headers["retry-after"]) >= 1
        throttled = [e for e in audit(node_dir) if e.get("outcome") == "throttled"]
        # one entry says it began, not one per refusal (again only after a token was earned)
        assert 1 <= len(throttled) <= 1 + sum(r.status_code == 401 for r in extra)
        assert metric(daemon, "unknown", "throttled") == 1 + sum(
            r.status_code == 429 for r in extra)
    finally:
        daemon.stop()
    write_config(node_dir, "node", app_auth="required")
    good = add_token(node_dir, "good")
    daemon = start_daemon(node_dir)
    try:
        with daemon.http() as http:
            r = http.post("/v2/models/digits/infer", json=body())
            assert r.status_code == 401 and "requires app credentials" in r.json()["error"]
            assert r.headers["www-authenticate"] == 'Bearer realm="outpost"'
            assert http.get("/v2/models/digits").status_code == 401
            assert http.get("/v2/health/ready").status_code == 200  # probes stay open
            assert http.get("/metrics").status_code == 200
            r = http.post("/v2/models/digits/infer", json=body(),
                          headers={"Authorization": f"Bearer {good}"})
            assert r.status_code == 200, r.text
        rows = json.dumps({"input": ROWS.tolist()})
        cli = outpost("infer", "digits", "--input", rows, data_dir=node_dir, check=False)
        assert cli.returncode == 1 and "requires app credentials" in cli.stderr
        cli = outpost("infer", "digits", "--input", rows, "--token", good, "--json",
                      data_dir=node_dir)
        assert [o["data"] for o in json.loads(cli.stdout)["outputs"]
                if o["name"] == "label"] == [LABELS]
        refused = [e for e in audit(node_dir) if e.get("outcome") == "unauthenticated"]
        assert [e["kind"] for e in refused[-3:]] == ["infer", "app.refused", "app.refused"]
        assert refused[-2]["detail"]["path"] == "/v2/models/digits"  # metadata: not an infer
        assert refused[-3]["model"] == "digits"
        assert metric(daemon, "anonymous", "ok") == 0
    finally:
        daemon.stop()


def _http_over_unix(path: str, request: bytes) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return int(head.split()[1]), rest


def _infer_request() -> bytes:
    payload = json.dumps(body()).encode()
    return (b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: outpost\r\nContent-Length: "
            + str(len(payload)).encode() + b"\r\n\r\n" + payload)


def _as_other_uid(path: str, uid: int, gid: int) -> tuple[int, bytes]:
    """Send one request from a forked child running as ``uid``; its answer comes back by pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, ask, report, exit without running any pytest code
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            status, answer = _http_over_unix(path, _infer_request())
            os.write(write_fd, json.dumps([status, answer.decode()]).encode())
            code = 0
        except BaseException as exc:  # the parent reads what went wrong
            os.write(write_fd, json.dumps([-1, repr(exc)]).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    status, text = json.loads(b"".join(chunks))
    return status, text.encode()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_the_app_socket_names_the_caller_by_its_uid(node_dir: Path) -> None:
    import grp

    nogroup = grp.getgrgid(65534).gr_name
    sock_dir = Path(tempfile.mkdtemp(prefix="outpost-app-"))
    sock_dir.chmod(0o755)  # the other uid must reach the socket file
    path = sock_dir / "app.sock"
    write_config(node_dir, "node", app_socket=str(path), app_socket_group=nogroup,
                 app_uids={"0": "root-svc"})
    daemon = start_daemon(node_dir)
    try:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 65534
        status, answer = _http_over_unix(str(path), _infer_request())
        assert status == 200, answer
        assert json.loads(answer)["parameters"]["outpost.route"] == "local"
        status, answer = _as_other_uid(str(path), 65534, 65534)
        assert status == 403, answer
        assert "uid 65534 is not mapped" in json.loads(answer)["error"]
        entries = audit(node_dir)
        mapped = [e for e in entries if e["kind"] == "infer" and e["caller"] == "app:root-svc"]
        assert mapped and mapped[-1]["detail"]["source"] == "uid:0"
        refused = [e for e in entries if e.get("outcome") == "forbidden"]
        assert refused and refused[-1]["detail"]["source"] == "uid:65534"
        assert metric(daemon, "root-svc", "ok") == 1
        assert metric(daemon, "unknown", "forbidden") == 1
    finally:
        daemon.stop()
        path.unlink(missing_ok=True)
        sock_dir.rmdir()


def test_a_bad_app_socket_setting_stops_startup_with_the_fix(node_dir: Path) -> None:
    write_config(node_dir, "node", app_socket=str(node_dir / "app.sock"),
                 app_socket_group="no-such-group-xyz")
    with pytest.raises(AssertionError, match="app_socket_group 'no-such-group-xyz'"):
        start_daemon(node_dir, timeout=60)
