"""OrtBackend and Batcher on real onnxruntime sessions.

Invariants: a request's outputs are the same whether it ran alone or inside a batch; the
queue never holds more than max_queue requests; one failing request fails only itself;
close() answers everything it accepted. Queueing is made deterministic with a Gate that
holds the worker inside a run, never with sleeps or timed assertions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from models import (
    CodecError,
    InferenceFailed,
    InvalidConfig,
    InvalidModel,
    ModelSignature,
    ModelUnavailable,
    OrtBackend,
    OrtModel,
    Overloaded,
    RuntimeConfig,
    TensorSpec,
    inspect_model,
)
from models import runtime as runtime_module
from models.batcher import Batcher
from node.testing import eventually_async

Array = np.ndarray[Any, Any]


class Recorder:
    """Observer that records every executed run."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, int, float]] = []

    def __call__(self, name: str, version: str, batch_size: int, seconds: float) -> None:
        self.runs.append((name, version, batch_size, seconds))

    @property
    def sizes(self) -> list[int]:
        return [run[2] for run in self.runs]


async def load(
    path: Path,
    config: RuntimeConfig | None = None,
    observer: Recorder | None = None,
    name: str = "m",
) -> OrtModel:
    """Load on its worker thread unless ``config`` says otherwise: these tests hold the worker
    (``gate``) to make batching deterministic; inline runs have their own tests."""
    backend = OrtBackend(config or RuntimeConfig(inline="never"), observer)
    return await backend.load(name, "1", path, inspect_model(path))


UNTIL_S = 60.0  # far beyond any state awaited here, well within pytest-timeout


async def until(predicate: Any) -> None:
    """Yield to the loop until ``predicate()`` holds (a millisecond at a time: the worker
    states awaited here last about that long)."""
    await eventually_async(predicate, timeout=UNTIL_S, what="the batcher state", interval=0.001)


async def held_then_queued(
    model: OrtModel, gate: Any, feeds: list[dict[str, Array]]
) -> list[asyncio.Future[Any]]:
    """Run ``feeds[0]`` alone and hold the worker inside it until every other feed is queued."""
    held = gate(model._batcher)
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(model.infer(feeds[0]))]
    await held.wait_entered()
    tasks += [asyncio.ensure_future(model.infer(feed)) for feed in feeds[1:]]
    await until(lambda: model.queue_depth == len(feeds))
    held.open()
    return tasks


# -- provider choice ------------------------------------------------------------------


async def test_auto_reports_cpu_quietly_here(
    digits_path: Path,
    digits_signature: ModelSignature,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="models.runtime")
    backend = OrtBackend(RuntimeConfig(providers="auto"))
    model = await backend.load("digits", "1", digits_path, digits_signature)
    try:
        assert model.provider == "CPUExecutionProvider"
        out, err = capfd.readouterr()
        assert "onnxruntime" not in out + err and "CUDA" not in out + err  # nothing leaked
        if "CUDAExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu, no GPU
            assert backend.describe()["cuda"].startswith("failed")
            warnings = [r for r in caplog.records if "did not load" in r.getMessage()]
            assert len(warnings) == 1
            # expected on a GPU-less machine: one complete INFO line, never cut mid-URL
            assert warnings[0].levelno == logging.INFO and "\n" not in warnings[0].getMessage()
            urls = [w for w in warnings[0].getMessage().split() if "://" in w]
            assert all(u.rstrip("),;").endswith("requirements") for u in urls), urls
            # Later loads go straight to CPU: no second attempt, no second warning.
            again = await backend.load("digits", "2", digits_path, digits_signature)
            assert again.provider == "CPUExecutionProvider"
            assert len([r for r in caplog.records if "did not load" in r.getMessage()]) == 1
            await again.close()
        described = backend.describe()
        assert described["backend"] == "onnxruntime" and described["config"]["max_batch_size"] == 32
    finally:
        await model.close()


async def test_cpu_only(digits_path: Path) -> None:
    backend = OrtBackend(RuntimeConfig(providers="cpu"))
    model = await backend.load("digits", "1", digits_path, inspect_model(digits_path))
    assert model.provider == "CPUExecutionProvider" and backend.describe()["cuda"] == "disabled"
    await model.close()


async def test_load_refuses_a_signature_that_does_not_match(
    digits_path: Path, models_dir: Any
) -> None:
    wrong = inspect_model(models_dir.add_mul())
    with pytest.raises(InvalidModel, match="manifest says"):
        await OrtBackend().load("digits", "1", digits_path, wrong)


async def test_load_refuses_unloadable_files(
    tmp_path: Path, digits_signature: ModelSignature
) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"junk" * 10)
    with pytest.raises(InvalidModel, match="cannot be loaded by onnxruntime"):
        await OrtBackend().load("junk", "1", path, digits_signature)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("providers", "gpu", '"auto" or "cpu"'),
        ("max_batch_size", 0, "from 1 to 4096"),
        ("max_batch_size", 2.0, "from 1 to 4096"),
        ("max_batch_delay_ms", -1.0, "from 0 to 1000"),
        ("max_queue", 0, "from 1 to 1000000"),
        ("intra_op_threads", -1, "from 0 to 256"),
        ("retry_after_s", 0, "from 0.001 to 3600"),
    ],
)
def test_config_validation_names_the_range(field: str, value: object, allowed: str) -> None:
    with pytest.raises(InvalidConfig, match=f"runtime.{field} must be .*{allowed}"):
        RuntimeConfig(**{field: value})  # type: ignore[arg-type]


def test_config_presets_are_valid() -> None:
    assert RuntimeConfig.low_latency() == RuntimeConfig()
    assert RuntimeConfig.throughput().max_batch_delay_ms > 0


# -- inference ------------------------------------------------------------------------


async def test_the_sample_model_classifies_its_examples(digits_path: Path) -> None:
    from models import SAMPLE_MANIFEST

    sidecar = json.loads(SAMPLE_MANIFEST.read_text())
    assert (sidecar["name"], sidecar["version"]) == ("digits", "1") and sidecar["accuracy"] > 0.9
    assert ModelSignature.from_json(sidecar) == inspect_model(digits_path)
    assert sidecar["sha256"] == hashlib.sha256(digits_path.read_bytes()).hexdigest()
    model = await load(digits_path)
    images = np.asarray([e["input"] for e in sidecar["examples"]], dtype=np.float32)
    out = await model.infer({"input": images})
    assert out["label"].tolist() == [e["label"] for e in sidecar["examples"]]
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    await model.close()


async def test_digits_matches_a_bare_session(digits_path: Path, digits_examples: Array) -> None:
    bare = ort.InferenceSession(str(digits_path), providers=["CPUExecutionProvider"])
    labels, probabilities = bare.run(None, {"input": digits_examples[:5]})
    model = await load(digits_path)
    out = await model.infer({"input": digits_examples[:5]})
    np.testing.assert_array_equal(out["label"], labels)
    np.testing.assert_allclose(out["probabilities"], probabilities, rtol=1e-6)
    assert list(out) == ["label", "probabilities"]
    await model.close()


async def test_concurrent_requests_are_batched_with_unbatched_results(
    digits_path: Path, digits_examples: Array, gate: Any
) -> None:
    recorder = Recorder()
    model = await load(digits_path, RuntimeConfig(max_batch_size=16, inline="never"), recorder, name="digits")
    bare = ort.InferenceSession(str(digits_path), providers=["CPUExecutionProvider"])
    rows = [digits_examples[i : i + 1 + i % 2] for i in range(30)]  # 1 or 2 rows each
    feeds = [{"input": r} for r in rows]
    tasks = await held_then_queued(model, gate, feeds)
    results = await asyncio.gather(*tasks)
    for r, out in zip(rows, results, strict=True):
        labels, probabilities = bare.run(None, {"input": r})
        np.testing.assert_array_equal(out["label"], labels)
        np.testing.assert_allclose(out["probabilities"], probabilities, rtol=1e-5, atol=1e-7)
    assert max(recorder.sizes) > 1 and sum(recorder.sizes) == 30
    assert all(
        name == "digits" and version == "1" and s >= 0 for name, version, _, s in recorder.runs
    )
    assert model.queue_depth == 0
    await model.close()


async def test_batches_respect_max_batch_size_in_rows(models_dir: Any, gate: Any) -> None:
    recorder = Recorder()
    model = await load(models_dir.add_mul(), RuntimeConfig(max_batch_size=4, inline="never"), recorder)
    one = np.ones((1, 4), np.float32)
    feeds = [{"a": one * i, "b": one} for i in range(9)]
    tasks = await held_then_queued(model, gate, feeds)
    results = await asyncio.gather(*tasks)
    assert recorder.sizes == [1, 4, 4]  # the held first run, then full batches of 4 rows
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["sum"], one * i + one)
        np.testing.assert_array_equal(out["product"], one * i)
    await model.close()


async def test_requests_with_different_inner_shapes_are_not_concatenated(
    models_dir: Any, gate: Any
) -> None:
    recorder = Recorder()
    model = await load(models_dir.identity("INT16", shape=("N", "M")), observer=recorder)
    arrays = [np.full((1, 2 + i % 2), i, np.int16) for i in range(6)]
    feeds = [{"x": a} for a in arrays]
    tasks = await held_then_queued(model, gate, feeds)
    for a, out in zip(arrays, await asyncio.gather(*tasks), strict=True):
        np.testing.assert_array_equal(out["y"], a)
    assert recorder.sizes == [1] * 6  # alternating shapes: FIFO order, nothing to merge
    await model.close()


async def test_static_batch_models_run_one_request_at_a_time(models_dir: Any, gate: Any) -> None:
    recorder = Recorder()
    model = await load(models_dir.identity("FP16", shape=(2, 3)), observer=recorder)
    assert not model.signature.batch_dynamic
    arrays = [np.full((2, 3), i, np.float16) for i in range(5)]
    feeds = [{"x": a} for a in arrays]
    tasks = await held_then_queued(model, gate, feeds)
    for a, out in zip(arrays, await asyncio.gather(*tasks), strict=True):
        np.testing.assert_array_equal(out["y"], a)
    assert recorder.sizes == [1] * 5
    await model.close()


async def test_outputs_that_do_not_follow_the_batch_are_not_split(
    models_dir: Any, gate: Any
) -> None:
    recorder = Recorder()
    model = await load(models_dir.column_sum(), observer=recorder)
    assert model.signature.batch_dynamic  # it claims to be, but sums over the batch
    arrays = [np.full((2, 3), i + 1, np.float32) for i in range(4)]
    feeds = [{"x": a} for a in arrays]
    tasks = await held_then_queued(model, gate, feeds)
    for a, out in zip(arrays, await asyncio.gather(*tasks), strict=True):
        np.testing.assert_array_equal(out["total"], a.sum(axis=0, keepdims=True))
    assert recorder.sizes == [1, 3, 1, 1, 1]  # merged run could not be split: rerun alone
    await model.close()


async def test_queue_full_raises_overloaded_at_once(
    digits_path: Path, digits_examples: Array, gate: Any
) -> None:
    model = await load(digits_path, RuntimeConfig(max_queue=3, retry_after_s=2.5, inline="never"))
    held = gate(model._batcher)
    x = {"input": digits_examples[:1]}
    tasks = [asyncio.ensure_future(model.infer(x)) for _ in range(3)]
    await held.wait_entered()
    await until(lambda: model.queue_depth == 3)
    with pytest.raises(Overloaded, match=r"limit runtime\.max_queue = 3") as info:
        await model.infer(x)
    assert info.value.retry_after == 2.5
    held.open()
    assert len(await asyncio.gather(*tasks)) == 3
    assert model.queue_depth == 0
    await model.infer(x)  # room again
    await model.close()


async def test_runtime_errors_fail_only_their_request(models_dir: Any, gate: Any) -> None:
    recorder = Recorder()
    model = await load(models_dir.gather(), observer=recorder, name="lookup")
    with pytest.raises(InferenceFailed, match="model lookup:1 failed") as info:
        await model.infer({"index": np.array([99], np.int64)})
    assert info.value.__cause__ is not None  # the onnxruntime error, chained
    good = await model.infer({"index": np.array([3], np.int64)})
    np.testing.assert_array_equal(good["value"], [30.0])

    indexes = [np.array([i], np.int64) for i in (1, 2, 42, 4)]
    feeds = [{"index": ix} for ix in indexes]
    tasks = await held_then_queued(model, gate, feeds)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], InferenceFailed)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i]["value"], indexes[i] * 10.0)  # type: ignore[index]
    await model.close()


async def test_close_drains_then_refuses(
    digits_path: Path, digits_examples: Array, gate: Any
) -> None:
    model = await load(digits_path)
    held = gate(model._batcher)
    tasks = [
        asyncio.ensure_future(model.infer({"input": digits_examples[i : i + 1]})) for i in range(5)
    ]
    await held.wait_entered()
    await until(lambda: model.queue_depth == 5)
    closing = asyncio.ensure_future(model.close())
    await until(lambda: model._batcher.closed)
    with pytest.raises(ModelUnavailable, match="is closed"):
        await model.infer({"input": digits_examples[:1]})
    held.open()
    await closing
    assert all(t.done() and not t.exception() for t in tasks)
    assert not model._batcher._thread.is_alive()


async def test_multi_input_and_bytes_models(models_dir: Any) -> None:
    model = await load(models_dir.add_mul())
    a, b = np.arange(8, dtype=np.float32).reshape(2, 4), np.full((2, 4), 2, np.float32)
    out = await model.infer({"a": a, "b": b})
    np.testing.assert_array_equal(out["sum"], a + b)
    np.testing.assert_array_equal(out["product"], a * b)
    await model.close()

    text = await load(models_dir.identity("BYTES"))
    values = np.array([[b"a", "é".encode(), b""]], dtype=object)
    out = await text.infer({"x": values})
    assert out["y"].dtype == object and out["y"].tolist() == values.tolist()  # bytes back
    with pytest.raises(CodecError, match="not valid UTF-8"):
        await text.infer({"x": np.array([[b"\xff", b"", b""]], dtype=object)})
    with pytest.raises(CodecError, match="BYTES elements must be bytes or str"):
        await text.infer({"x": np.array([[b"a", 5, b""]], dtype=object)})
    await text.close()


async def test_infer_checks_input_names_and_dtypes(digits_path: Path) -> None:
    model = await load(digits_path)
    with pytest.raises(CodecError, match=r"takes inputs \['input'\]"):
        await model.infer({"x": np.zeros((1, 64), np.float32)})
    with pytest.raises(CodecError, match="must be a numpy float32 array, got float64"):
        await model.infer({"input": np.zeros((1, 64))})
    await model.close()


async def test_cancelled_requests_are_skipped(
    digits_path: Path, digits_examples: Array, gate: Any
) -> None:
    recorder = Recorder()
    model = await load(digits_path, observer=recorder)
    held = gate(model._batcher)
    x = {"input": digits_examples[:1]}
    first = asyncio.ensure_future(model.infer(x))
    await held.wait_entered()
    doomed = [asyncio.ensure_future(model.infer(x)) for _ in range(3)]
    await until(lambda: model.queue_depth == 4)
    for task in doomed:
        task.cancel()
    await asyncio.gather(*doomed, return_exceptions=True)
    held.open()
    await first
    await model.infer(x)
    assert recorder.sizes == [1, 1]  # the three cancelled requests never ran
    assert model.queue_depth == 0
    await model.close()


# -- batcher alone ----------------------------------------------------------------------


def _echo(feed: dict[str, Array]) -> dict[str, Array]:
    return {"out": feed["x"] * 2}


def _batcher(observer: Any = None, **kwargs: Any) -> Batcher:
    settings: dict[str, Any] = dict(
        name="b",
        version="1",
        batchable=True,
        max_batch_size=8,
        max_batch_delay_s=0.0,
        max_queue=100,
        retry_after_s=1.0,
        observer=observer,
    )
    settings.update(kwargs)
    return Batcher(_echo, **settings)


async def test_batch_delay_waits_for_more_requests() -> None:
    recorder = Recorder()
    batcher = _batcher(recorder, max_batch_size=4, max_batch_delay_s=60.0)
    x = np.ones((1, 2), np.float32)
    first = batcher.submit({"x": x})
    await until(lambda: not batcher._queue)  # the worker took it and is waiting for more
    rest = [batcher.submit({"x": x * i}) for i in range(3)]  # fills the batch: runs now
    results = await asyncio.gather(first, *rest)
    assert recorder.sizes == [4]
    np.testing.assert_array_equal(results[3]["out"], x * 4)
    await batcher.close()


async def test_observer_errors_do_not_stop_the_worker() -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("metrics down")

    batcher = _batcher(broken)
    x = np.ones((1, 2), np.float32)
    for _ in range(2):
        np.testing.assert_array_equal((await batcher.submit({"x": x}))["out"], x * 2)
    await batcher.close()


async def test_close_with_nothing_queued_and_submit_after_close() -> None:
    batcher = _batcher()
    await batcher.close()
    await batcher.close()  # idempotent
    with pytest.raises(ModelUnavailable):
        batcher.submit({"x": np.ones((1, 2))})


async def test_signature_json_is_what_metadata_serves(digits_signature: ModelSignature) -> None:
    assert digits_signature.outputs[1] == TensorSpec("probabilities", "FP32", (-1, 10))


async def test_dense_model_batches_like_numpy(tmp_path: Path, gate: Any) -> None:
    import onnx
    from onnx import numpy_helper

    from models.sample.dense import build_dense

    path = build_dense(tmp_path / "dense.onnx", width=32, layers=3)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}

    def reference(x: Array) -> Array:
        for i in range(3):
            x = np.maximum(x @ weights[f"w{i}"] + weights[f"b{i}"], 0)
        return x

    recorder = Recorder()
    model = await load(path, RuntimeConfig(intra_op_threads=2, inline="never"), recorder)
    assert model.signature.inputs == (TensorSpec("input", "FP32", (-1, 32)),)
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.standard_normal((1 + i % 3, 32)).astype(np.float32)} for i in range(12)]
    results = await asyncio.gather(*await held_then_queued(model, gate, feeds))
    for feed, out in zip(feeds, results, strict=True):
        np.testing.assert_allclose(out["output"], reference(feed["input"]), rtol=1e-4, atol=1e-5)
    assert max(recorder.sizes) > 1
    assert (
        build_dense(tmp_path / "again.onnx", width=32, layers=3).read_bytes() == path.read_bytes()
    )
    await model.close()


def test_native_output_is_captured_not_printed(capfd: pytest.CaptureFixture[str]) -> None:
    import os

    from models.runtime import _native_output_captured

    with _native_output_captured() as captured:
        os.write(
            2,
            b"\x1b[1;31m2026 [E:onnxruntime:Default, x.cc:1 f()] /a/b/c.cc:2 g() "
            b"[ONNXRuntimeError] : 1 : FAIL : Failed to load library /opt/lib/libx.so\x1b[m\n",
        )
        os.write(1, b"banner\n")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert captured.summary() == "Failed to load library libx.so"
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


async def test_what_one_loop_iteration_queues_runs_as_one_batch() -> None:
    """A sleeping worker is woken once per loop iteration, so requests queued together share a
    run; a request ``alone`` on the node wakes it at once, even while the loop is busy."""
    import threading

    ran = threading.Event()
    recorder = Recorder()

    def observe(name: str, version: str, size: int, seconds: float) -> None:
        recorder(name, version, size, seconds)
        ran.set()

    batcher = _batcher(observe)
    x = np.ones((1, 2), np.float32)
    await until(lambda: batcher._waiting == 1)  # the worker sleeps
    burst = [batcher.submit({"x": x * i}) for i in range(5)]
    assert not ran.wait(0.3), "woken before the loop iteration ended"  # the loop is blocked here
    await asyncio.gather(*burst)
    assert recorder.sizes == [5]
    ran.clear()
    await until(lambda: batcher._waiting == 1)
    alone = batcher.submit({"x": x}, alone=True)
    assert ran.wait(5), "a request alone must not wait for the loop to wake the worker"
    assert (await alone)["out"].tolist() == [[2.0, 2.0]]
    await batcher.close()


# -- inline or worker --------------------------------------------------------------------


class ThreadRecorder(Recorder):
    """Also records which thread ran each batch (the observer runs on that thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def __call__(self, name: str, version: str, size: int, seconds: float) -> None:
        super().__call__(name, version, size, seconds)
        self.threads.append(threading.get_ident())


def slow_model(path: Path) -> Path:
    """``x`` FP32 [N, 256] -> 64 chained 256x256 MatMuls: milliseconds per run, far above
    any thread hand-off."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(64):
        w = numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32),
                                    f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    from tests.models.conftest import write_model

    return write_model(path, nodes, [("x", TensorProto.FLOAT, ["N", 256])],
                       [("y", TensorProto.FLOAT, ["N", 256])], initializers=inits)


async def test_a_tiny_model_runs_inline_and_a_slow_one_on_its_worker(
    models_dir: Any, tmp_path: Path
) -> None:
    tiny_rec, slow_rec = ThreadRecorder(), ThreadRecorder()
    backend_tiny = OrtBackend(RuntimeConfig(), tiny_rec)
    tiny = await backend_tiny.load("tiny", "1", models_dir.identity(),
                                   inspect_model(models_dir.identity()))
    slow_path = slow_model(tmp_path / "slow.onnx")
    slow = await OrtBackend(RuntimeConfig(), slow_rec).load("slow", "1", slow_path,
                                                             inspect_model(slow_path))
    assert tiny.execution["mode"] == "inline", tiny.execution
    assert tiny.execution["run_p50_us"] < tiny.execution["handoff_p50_us"]
    assert slow.execution["mode"] == "worker", slow.execution
    assert slow.execution["run_p50_us"] >= slow.execution["handoff_p50_us"]

    loop_thread = threading.get_ident()
    tiny_rec.threads.clear()
    slow_rec.threads.clear()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    # While the slow model runs on its worker, the loop keeps serving the tiny one.
    slow_future = slow.infer({"x": np.ones((1, 256), np.float32)})
    for _ in range(5):
        np.testing.assert_array_equal((await tiny.infer({"x": x}))["y"], x)
    assert not slow_future.done() or slow_rec.threads  # it ran (or runs) elsewhere
    out = await slow_future
    assert out["y"].shape == (1, 256)
    assert set(tiny_rec.threads) == {loop_thread}
    assert slow_rec.threads and loop_thread not in slow_rec.threads
    await tiny.close()
    await slow.close()


async def test_inline_batches_what_one_loop_iteration_queued(models_dir: Any) -> None:
    recorder = ThreadRecorder()
    backend = OrtBackend(RuntimeConfig(inline="always", max_batch_size=8), recorder)
    path = models_dir.add_mul()
    model = await backend.load("m", "1", path, inspect_model(path))
    recorder.runs.clear()
    one = np.ones((1, 4), np.float32)
    futures = [model.infer({"a": one * i, "b": one}) for i in range(10)]  # one iteration
    results = await asyncio.gather(*futures)
    assert recorder.sizes == [8, 2]  # batches of max_batch_size rows, on the loop
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["sum"], one * i + one)
    assert model.queue_depth == 0
    await model.close()


async def test_inline_keeps_big_requests_off_the_loop(models_dir: Any) -> None:
    recorder = ThreadRecorder()
    backend = OrtBackend(RuntimeConfig(inline="always", max_batch_size=4), recorder)
    path = models_dir.identity()
    model = await backend.load("m", "1", path, inspect_model(path))
    recorder.threads.clear()
    big = np.zeros((1000, 3), np.float32)  # far more than 4 rows of the probe's size
    np.testing.assert_array_equal((await model.infer({"x": big}))["y"], big)
    assert recorder.threads and threading.get_ident() not in recorder.threads
    await model.close()


async def test_inline_failures_fail_only_their_request(models_dir: Any) -> None:
    backend = OrtBackend(RuntimeConfig(inline="always"))
    path = models_dir.gather()
    model = await backend.load("g", "1", path, inspect_model(path))
    good = model.infer({"index": np.array([1, 2], np.int64)})
    bad = model.infer({"index": np.array([42], np.int64)})
    np.testing.assert_array_equal((await good)["value"], [10.0, 20.0])
    with pytest.raises(InferenceFailed, match="failed to run the request"):
        await bad
    await model.close()


async def test_the_choice_is_made_again_from_runs_in_service(models_dir: Any) -> None:
    path = models_dir.identity()
    model = await OrtBackend(RuntimeConfig()).load("m", "1", path, inspect_model(path))
    assert model.execution["mode"] == "inline"
    # Service shows runs slower than the hand-off (as if the model's real inputs were
    # costlier than the probe's zeros): the next decision moves it to the worker.
    handoff = model.execution["handoff_p50_us"] / 1e6
    for _ in range(runtime_module.REDECIDE_EVERY):
        model._observe("m", "1", 1, handoff * 3)
    assert model.execution["mode"] == "worker"
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal((await model.infer({"x": x}))["y"], x)
    await model.close()


async def test_never_keeps_every_model_on_its_worker(models_dir: Any) -> None:
    path = models_dir.identity()
    model = await OrtBackend(RuntimeConfig(inline="never")).load("m", "1", path,
                                                                  inspect_model(path))
    assert model.execution == {"mode": "worker", "run_p50_us": None, "handoff_p50_us": None}
    await model.close()
