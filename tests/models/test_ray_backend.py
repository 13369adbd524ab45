"""RayBackend against a real local Ray (one per session, 2 CPUs), beside OrtBackend.

Invariants: through Ray a request gets exactly the outputs the in-process backend gives (so
the OIP endpoint cannot tell them apart); batching, the bounded queue (Overloaded) and
error isolation behave as in-process; a Ray that stops mid-run never fails a request — the
model runs in-process, the backend says degraded and why, and returns to Ray by itself.
Queueing is made deterministic with the Gate (a worker held inside its run), as in
test_models_runtime; the Ray-stopping test runs last in this module because it restarts Ray.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import (
    SAMPLE_MANIFEST,
    InferenceFailed,
    InvalidConfig,
    InvalidModel,
    ModelSignature,
    OrtBackend,
    Overloaded,
    RuntimeConfig,
    TensorSpec,
    inspect_model,
)
from models.codec import decode_infer_request
from models.ray_backend import RayBackend, RayConfig, RayModel, create_backend, plan_replicas
from node.testing import ROOT
from node.testing import eventually_async as wait_for
from tests.models.test_models_runtime import Recorder, until

Array = np.ndarray[Any, Any]
CPU = RuntimeConfig(providers="cpu")
# Half a CPU per replica: two models of two replicas fit the session's 2-CPU Ray.
SMALL = RayConfig(address="local", num_cpus_per_replica=0.5, max_replicas=2,
                  reconnect_interval_s=1.0, scale_down_after_s=0.5)


async def ray_model(path: Path, ray_config: RayConfig = SMALL, runtime: RuntimeConfig = CPU,
                    observer: Recorder | None = None, name: str = "m",
                    ) -> tuple[RayBackend, RayModel]:
    backend = RayBackend(runtime, ray_config, observer)
    return backend, await backend.load(name, "1", path, inspect_model(path))


async def closing(backend: RayBackend, *models: Any) -> None:
    for model in models:
        await model.close()
    await backend.close()


# -- no Ray needed ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"address": "localhost"}, "ray.address"),
        ({"address": "ray://nohost"}, "ray.address"),
        ({"min_replicas": 3, "max_replicas": 2}, "ray.max_replicas"),
        ({"min_replicas": 0}, "ray.min_replicas"),
        ({"num_cpus_per_replica": 0}, "ray.num_cpus_per_replica"),
        ({"inflight_per_replica": 0}, "ray.inflight_per_replica"),
        ({"namespace": "a b"}, "ray.namespace"),
        ({"fallback": "yes"}, "ray.fallback"),
    ],
)
def test_config_is_validated_and_names_the_key(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidConfig, match=fragment.replace(".", r"\.")):
        RayConfig(**changes)


def test_config_accepts_every_documented_address() -> None:
    for address in ("", "local", "auto", "ray://head.example:10001", "10.0.0.5:6379"):
        assert RayConfig(address=address).enabled == bool(address)


def test_ray_off_means_ortbackend_and_no_ray_import() -> None:
    code = (
        "import sys; from models import create_backend, RuntimeConfig, RayConfig\n"
        "b = create_backend(RuntimeConfig(), RayConfig())\n"
        "assert type(b).__name__ == 'OrtBackend', b\n"
        "assert b.health() == {'degraded': False, 'reason': None}\n"
        "assert 'ray' not in sys.modules, 'ray imported with Ray off'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    assert isinstance(create_backend(CPU, None), OrtBackend)
    with pytest.raises(InvalidConfig, match=r"ray\.address"):
        RayBackend(CPU, RayConfig())


def test_plan_replicas_scales_up_at_once_and_down_slowly() -> None:
    cfg = RayConfig(address="local", min_replicas=1, max_replicas=4, scale_up_queue=8,
                    scale_down_after_s=30)

    def plan(queued: int, live: int, starting: int = 0, low: float | None = None,
             now: float = 100.0) -> tuple[int, float | None]:
        return plan_replicas(queued=queued, live=live, starting=starting, low_since=low,
                             now=now, config=cfg)

    assert plan(0, 0) == (1, None)  # below min: start one
    assert plan(8, 1) == (0, None)  # 8 per replica is fine
    assert plan(25, 1) == (3, None)  # ceil(25 / 8) = 4 wanted: all at once
    assert plan(100, 1, starting=3) == (0, None)  # max reached counting starters
    assert plan(0, 3) == (0, 100.0)  # short queue: start the clock
    assert plan(0, 3, low=80.0) == (0, 80.0)  # not long enough
    assert plan(0, 3, low=70.0) == (-1, 100.0)  # one down, clock restarts
    assert plan(0, 1, low=0.0) == (0, None)  # never below min
    assert plan(0, 3, starting=1, low=0.0) == (0, None)  # not while others start


# -- on Ray -----------------------------------------------------------------------------------

ray_tests = pytest.mark.ray


def oip_json_rows(rows: Array) -> dict[str, Array]:
    """The tensors the endpoint hands the backend for a JSON request of these rows."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.flatten().tolist()}]}
    request = decode_infer_request(json.dumps(body).encode(), None,
                                   inspect_model(ROOT / "models/sample/digits.onnx"))
    return request.inputs


@ray_tests
async def test_results_equal_in_process_and_describe_reports_the_cluster(
    ray_up: Any, digits_path: Path, digits_examples: Array
) -> None:
    backend, model = await ray_model(digits_path, name="digits")
    local = await OrtBackend(CPU).load("digits", "1", digits_path, inspect_model(digits_path))
    try:
        assert model.mode == "ray" and model.provider == "CPUExecutionProvider"
        for rows in (digits_examples[:1], digits_examples[:7], digits_examples):
            inputs = oip_json_rows(rows)
            got, want = await model.infer(inputs), await local.infer(inputs)
            assert got.keys() == want.keys()
            for name in want:
                assert got[name].dtype == want[name].dtype
                assert np.array_equal(got[name], want[name]), name
        labels = [e["label"] for e in json.loads(SAMPLE_MANIFEST.read_text())["examples"]]
        out = await model.infer({"input": digits_examples[: len(labels)]})
        assert out["label"].tolist() == labels
        facts = backend.describe()
        assert facts["backend"] == "ray" and facts["connected"] and not facts["degraded"]
        cluster = facts["cluster"]
        assert cluster["cpus"] == 2 and cluster["nodes"] == 1 and cluster["memory"] > 0
        assert cluster["replicas"] == 1 and facts["models"][0]["mode"] == "ray"
        assert backend.health() == {"degraded": False, "reason": None, "since": None}
    finally:
        await local.close()
        await closing(backend, model)


@ray_tests
async def test_text_tensors_cross_ray_unchanged(ray_up: Any, models_dir: Any) -> None:
    path = models_dir.identity("BYTES", ("N", 2))
    backend, model = await ray_model(path)
    try:
        data = np.array([[b"caf\xc3\xa9", b""], [b"x" * 300, b"\xf0\x9f\x9a\x80"]], dtype=object)
        out = await model.infer({"x": data})
        assert out["y"].tolist() == data.tolist()
    finally:
        await closing(backend, model)


@ray_tests
async def test_concurrent_requests_are_batched_on_the_replica(
    ray_up: Any, digits_path: Path, digits_examples: Array, gate: Any
) -> None:
    recorder = Recorder()
    one_slot = RayConfig(address="local", num_cpus_per_replica=0.5, inflight_per_replica=1,
                         max_replicas=1)
    backend, model = await ray_model(digits_path, one_slot, observer=recorder)
    try:
        held = gate(model._batcher)
        first = asyncio.ensure_future(model.infer({"input": digits_examples[:1]}))
        await held.wait_entered()
        rest = [asyncio.ensure_future(model.infer({"input": digits_examples[i:i + 2]}))
                for i in range(1, 11, 2)]
        await until(lambda: model.queue_depth == 6)
        held.open()
        results = await asyncio.gather(first, *rest)
        assert recorder.sizes == [1, 5]  # one run alone, then one remote call for five
        alone = [await model.infer({"input": digits_examples[i:i + 2]}) for i in range(1, 11, 2)]
        for got, want in zip(results[1:], alone, strict=True):
            assert np.array_equal(got["probabilities"], want["probabilities"])
    finally:
        await closing(backend, model)


@ray_tests
async def test_full_queue_is_overloaded_and_a_bad_request_fails_alone(
    ray_up: Any, models_dir: Any, gate: Any
) -> None:
    path = models_dir.gather()  # an index outside 0..9 makes onnxruntime raise
    runtime = RuntimeConfig(providers="cpu", max_queue=3, retry_after_s=2.5)
    one_slot = RayConfig(address="local", num_cpus_per_replica=0.5, inflight_per_replica=1,
                         max_replicas=1)
    backend, model = await ray_model(path, one_slot, runtime)
    try:
        held = gate(model._batcher)
        first = asyncio.ensure_future(model.infer({"index": np.array([1], dtype=np.int64)}))
        await held.wait_entered()
        bad = asyncio.ensure_future(model.infer({"index": np.array([42], dtype=np.int64)}))
        good = asyncio.ensure_future(model.infer({"index": np.array([3], dtype=np.int64)}))
        await until(lambda: model.queue_depth == 3)
        with pytest.raises(Overloaded) as refused:
            await model.infer({"index": np.array([2], dtype=np.int64)})
        assert refused.value.retry_after == 2.5 and "runtime.max_queue = 3" in str(refused.value)
        held.open()
        assert (await first)["value"].tolist() == [10.0]
        with pytest.raises(InferenceFailed, match="failed to run the request"):
            await bad
        assert (await good)["value"].tolist() == [30.0]
        assert model.mode == "ray" and model.replicas == 1  # a model error is not Ray's
    finally:
        await closing(backend, model)


@ray_tests
async def test_a_model_that_does_not_match_its_manifest_is_refused(
    ray_up: Any, digits_path: Path
) -> None:
    wrong = ModelSignature((TensorSpec("input", "FP32", (-1, 32)),),
                           inspect_model(digits_path).outputs)
    backend = RayBackend(CPU, SMALL)
    with pytest.raises(InvalidModel, match="manifest"):
        await backend.load("digits", "1", digits_path, wrong)
    assert backend.describe()["models"] == []
    await backend.close()


@ray_tests
async def test_queue_depth_adds_a_replica_and_a_lull_removes_it(
    ray_up: Any, digits_path: Path, digits_examples: Array, gate: Any
) -> None:
    eager = RayConfig(address="local", num_cpus_per_replica=0.5, min_replicas=1,
                      max_replicas=2, scale_up_queue=2, scale_down_after_s=0.5,
                      inflight_per_replica=1)
    backend, model = await ray_model(digits_path, eager)
    try:
        held = gate(model._batcher)
        tasks = [asyncio.ensure_future(model.infer({"input": digits_examples[:1]}))]
        await held.wait_entered()
        tasks += [asyncio.ensure_future(model.infer({"input": digits_examples[i:i + 1]}))
                  for i in range(1, 6)]
        await wait_for(lambda: model.replicas == 2, 60, "a second replica")
        assert backend.describe()["cluster"]["replicas"] == 2
        held.open()
        await asyncio.gather(*tasks)
        await wait_for(lambda: model.replicas == 1, 30, "back to one replica")
    finally:
        await closing(backend, model)


@ray_tests
@pytest.mark.blocks_loop("ray.shutdown() runs on the loop: Ray vanishes between two requests, "
                         "with nothing able to run meanwhile (~1.5 s)")
async def test_ray_stopped_mid_run_falls_back_in_process_then_reconnects(
    ray_up: Any, digits_path: Path, digits_examples: Array
) -> None:
    # Last in the module: it stops the session's Ray, and the backend starts it again.
    backend, model = await ray_model(digits_path, name="digits")
    local = await OrtBackend(CPU).load("digits", "1", digits_path, inspect_model(digits_path))
    try:
        want = await local.infer({"input": digits_examples})
        served = await asyncio.gather(*(model.infer({"input": digits_examples[i:i + 4]})
                                        for i in range(0, 40, 4)))
        assert model.mode == "ray" and len(served) == 10
        ray_up.shutdown()  # type: ignore[attr-defined]
        # Every request is still answered, with the same outputs, now in-process.
        for i in range(0, 40, 8):
            got = await model.infer({"input": digits_examples[i:i + 8]})
            assert np.array_equal(got["probabilities"], want["probabilities"][i:i + 8])
        assert model.mode == "local"
        await wait_for(lambda: not backend.describe()["connected"], 10, "Ray seen down")
        health = backend.health()
        assert health["degraded"] is True and "Ray" in health["reason"] and health["since"]
        assert backend.describe()["models"][0]["mode"] == "local"
        # The monitor reconnects (address "local" starts Ray again) and moves the model back.
        await wait_for(lambda: model.mode == "ray", 120, "the model back on Ray")
        assert backend.health()["degraded"] is False
        got = await model.infer({"input": digits_examples})
        assert np.array_equal(got["label"], want["label"])
    finally:
        await local.close()
        await closing(backend, model)
