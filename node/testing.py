"""Test helpers shipped with the node, as trio ships ``trio.testing``: what the project's tests,
benchmarks and demo share to drive real nodes (``federation.testing`` is the sans-I/O twin, a
seeded in-memory simulator; this module drives the real I/O shell).

Owns:

- ``EXAMPLE_POLICY``: THE example policy of DESIGN §4 (personal data stays off the cloud and
  in its jurisdiction, public data goes anywhere), and the two policies tests add to it.
- ``eventually`` / ``eventually_async``: poll a predicate until it holds or a deadline passes,
  then fail naming what was awaited and the last value seen.
- ``free_port``: a loopback port free for both TCP and UDP (the peer endpoint uses both).
- ``outpost``: the real ``outpost`` CLI — in this process through click's ``CliRunner`` by
  default (a Python start-up costs ~0.3 s, a command in-process a few ms), or as a
  subprocess (``in_process=False``: the real entry point, exit codes and the two streams
  exactly as a shell sees them, native libraries' writes to fds 1 and 2 included).
- ``start_daemon`` / ``DaemonProc``: ``outpost run`` as a real subprocess on loopback.
- ``init_node``, ``write_config``, ``enroll``, ``Federation``: data directories, and a
  federation of real daemons on loopback built through the CLI.
- ``LoopBlockGuard``: notices an event loop that stops turning, and where it was stuck.

Must never: be imported by the daemon or the CLI (tests, bench/ and the demo import it);
mock anything; leave running a process it started once ``stop()`` returns. It imports
pytest nowhere (pytest is a test extra, the demo runs without it): the fixtures wrapping
these helpers live in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

#: The repository (or site-packages) root: the working directory of every process started
#: here, so that ``python -m cli.main`` runs this checkout's code.
ROOT = Path(__file__).resolve().parent.parent
#: The CLI's real entry point as a command line.
OUTPOST = [sys.executable, "-m", "cli.main"]

# -- the example policy ----------------------------------------------------------------------

#: DESIGN §4's example, as README and the demo show it: personal data stays off the cloud and
#: in its jurisdiction; public data goes anywhere; anything may run where it lands.
EXAMPLE_POLICY = """\
@id("infer-anywhere")
permit(principal, action == Action::"infer", resource);

@id("public-anywhere")
permit(principal, action == Action::"forward", resource)
  when { resource.data_class == "public" };

@id("personal-stays-home")
permit(principal, action == Action::"forward", resource)
  when { resource.data_class == "personal" && context.target.tier != "cloud"
         && context.target.jurisdiction == resource.jurisdiction };
"""

#: The receiving side refuses too, whatever the sender decided (README's example).
NO_PERSONAL_ON_CLOUD = """\
@id("no-personal-on-cloud")
forbid(principal, action == Action::"infer", resource)
  when { resource.data_class == "personal" && context.executor.tier == "cloud" };
"""

#: Models may be pulled by any node but a cloud one.
PULL_OFF_CLOUD = """\
@id("pull-off-cloud")
permit(principal, action == Action::"model.pull", resource)
  when { context.target.tier != "cloud" };
"""

# -- waiting ---------------------------------------------------------------------------------


def eventually(
    check: Callable[[], T],
    timeout: float = 30.0,
    what: str = "",
    *,
    interval: float = 0.25,
    retry_on: tuple[type[BaseException], ...] = (),
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy, and
    return that. After ``timeout`` seconds: AssertionError naming ``what``, the last value,
    and ``diagnose()`` (e.g. the daemons' log tails). Exceptions in ``retry_on`` count as
    "not yet" (e.g. a daemon still starting); any other propagates at once."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(_timed_out(timeout, what, last, diagnose))


async def eventually_async(
    check: Callable[[], T | Awaitable[T]],
    timeout: float = 30.0,
    what: str = "",
    *,
    interval: float = 0.05,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """``eventually`` for a coroutine: sleeps on the loop between checks (so the awaited
    thing can happen); ``check`` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        got = check()
        value: T = await got if inspect.isawaitable(got) else got
        if value:
            return value
        last = value
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval)
    raise AssertionError(_timed_out(timeout, what, last, diagnose))


def _timed_out(timeout: float, what: str, last: Any, diagnose: Callable[[], str] | None) -> str:
    text = f"timed out after {timeout:g} s waiting for {what or 'a condition'}: last={last!r}"
    return f"{text}\n{diagnose()}" if diagnose is not None else text


def free_port() -> int:
    """A loopback port free for both TCP and UDP (free when asked: bind it soon)."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


# -- the CLI ---------------------------------------------------------------------------------

# CliRunner swaps the process's sys.stdout/stderr while a command runs: one command at a time.
_CLI_LOCK = threading.Lock()


def outpost(
    *args: str,
    data_dir: Path | None = None,
    check: bool = True,
    timeout: float = 120.0,
    in_process: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``outpost ARGS [--data-dir DIR]``; stdout, stderr and the exit code as a shell
    would see them. In-process unless ``in_process=False`` (``run`` always gets a process:
    it installs signal handlers and blocks). ``timeout`` bounds only a subprocess (in
    process, pytest-timeout does). ``check``: AssertionError with both streams on a
    non-zero exit."""
    argv = list(args)
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if in_process and args[:1] != ("run",):
        result = _in_process(argv)
    else:
        result = subprocess.run(
            [*OUTPOST, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
    if check and result.returncode != 0:
        raise AssertionError(
            f"outpost {' '.join(args)} exited {result.returncode}\nstdout:{result.stdout}\n"
            f"stderr:{result.stderr}"
        )
    return result


def _in_process(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _invoke(argv)
    # On an event loop's thread, the commands' own asyncio.run would be refused: run on a
    # worker thread and wait (blocking the loop just as subprocess.run would).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outpost-cli") as pool:
        return pool.submit(_invoke, argv).result()


class _LastResort(logging.Handler):
    """What a fresh ``outpost`` process does with a warning logged while no handler is
    configured (``logging.lastResort``): its message on the stderr of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


def _invoke(argv: list[str]) -> subprocess.CompletedProcess[str]:
    from click.testing import CliRunner

    from cli.main import main

    last_resort = _LastResort(logging.WARNING)
    with _CLI_LOCK:
        root = logging.getLogger()
        root.addHandler(last_resort)
        try:
            result = CliRunner().invoke(main, argv, prog_name="outpost")
        finally:
            root.removeHandler(last_resort)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # The real CLI would print this traceback: a bug, shown with its own stack.
        raise result.exception
    return subprocess.CompletedProcess(
        [*OUTPOST, *argv], result.exit_code, result.stdout, result.stderr
    )


# -- nodes and daemons -----------------------------------------------------------------------


@dataclass
class DaemonProc:
    """A running ``outpost run`` subprocess; ``log`` fills with its output as it comes."""

    data_dir: Path
    proc: subprocess.Popen[str]
    url: str = ""
    log: list[str] = field(default_factory=list)
    _terminated: bool = field(default=False, init=False, repr=False)

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")

    def http(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not drained within 60 s; its exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM if it runs and was not sent one here yet: the daemon starts draining (a
        second signal would cut the drain short)."""
        if self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True


def start_daemon(
    data_dir: Path, *extra: str, timeout: float = 90.0, module: str = "cli.main"
) -> DaemonProc:
    """Start ``outpost run`` on free loopback ports and wait until it reports ready
    (``module``: another entry point that wraps the CLI, e.g. to patch the daemon)."""
    argv = [
        sys.executable,
        "-m",
        module,
        "run",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
        *extra,
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    daemon = DaemonProc(data_dir, proc)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        daemon.log.append(line)
        if "ready on " in line:
            daemon.url = line.rsplit("ready on ", 1)[1].strip()
            _drain_in_background(daemon)
            return daemon
    proc.kill()
    proc.wait()
    raise AssertionError("daemon did not become ready:\n" + "".join(daemon.log))


def _drain_in_background(daemon: DaemonProc) -> None:
    def pump() -> None:
        assert daemon.proc.stdout is not None
        for line in daemon.proc.stdout:
            daemon.log.append(line)

    threading.Thread(target=pump, daemon=True).start()


def init_node(data_dir: Path, name: str = "node-a", *extra: str) -> None:
    outpost("init", "--name", name, *extra, data_dir=data_dir)


def write_config(data_dir: Path, section: str, **values: object) -> None:
    """Change keys of one section of the node's outpost.toml."""
    import tomli_w

    path = data_dir / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw.setdefault(section, {}).update(values)
    path.write_text(tomli_w.dumps(raw))


# -- a federation ----------------------------------------------------------------------------


def enroll(tmp_path: Path, ca: Path, name: str, *attrs: str) -> Path:
    """A node ``tmp_path/name`` (no sample model) enrolled by the authority in ``ca`` with
    ``attrs`` (``--tier``, ``--site``, ``--jurisdiction``, ``--label``), as an operator would."""
    data_dir = tmp_path / name
    init_node(data_dir, name, "--no-sample")
    req = tmp_path / f"{name}.req"
    cert = tmp_path / f"{name}.pem"
    outpost("join", "request", "-o", str(req), data_dir=data_dir)
    outpost("federation", "enroll", str(req), "--ca", str(ca), *attrs, "-o", str(cert))
    outpost("join", str(cert), data_dir=data_dir)
    return data_dir


def configure(data_dir: Path, **federation: Any) -> None:
    """Fast local federation settings (1 s adverts and checkpoints), no mDNS, plus
    ``federation``'s keys."""
    import tomli_w

    path = data_dir / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw["federation"].update(
        {"preset": "local", "advert_interval_s": 1.0, "checkpoint_interval_s": 1.0, **federation}
    )
    raw["discovery"] = {"mdns": False}
    path.write_text(tomli_w.dumps(raw))


def status(data_dir: Path) -> dict[str, Any]:
    """``outpost status --json``."""
    return dict(json.loads(outpost("status", "--json", data_dir=data_dir).stdout))


def peers(data_dir: Path) -> dict[str, dict[str, Any]]:
    """``outpost peers --json`` by node id."""
    rows = json.loads(outpost("peers", "--json", data_dir=data_dir).stdout)
    return {r["node_id"]: r for r in rows}


class Federation:
    """A federation ``acme`` (authority in ``tmp/ca``) of real daemons on loopback: ``add``
    enrolls a node and gives it a fixed peer port, ``start`` runs it; ``stop_all`` stops
    every daemon started."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = tmp / "ca"
        outpost("federation", "init", "--dir", str(self.ca), "--name", "acme")
        self.dirs: dict[str, Path] = {}
        self.ports: dict[str, int] = {}
        self.procs: dict[str, DaemonProc] = {}

    def add(
        self, name: str, tier: str = "edge", jurisdiction: str = "DE", seed: str | None = None
    ) -> Path:
        d = enroll(
            self.tmp,
            self.ca,
            name,
            "--tier",
            tier,
            "--site",
            f"site-{name}",
            "--jurisdiction",
            jurisdiction,
        )
        self.ports[name] = free_port()
        seeds = [f"127.0.0.1:{self.ports[seed]}"] if seed else []
        configure(d, seeds=seeds)
        self.dirs[name] = d
        return d

    def start(self, name: str) -> DaemonProc:
        proc = start_daemon(self.dirs[name], "--peer-listen", f"127.0.0.1:{self.ports[name]}")
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():  # SIGTERM to all first: they drain in parallel
            proc.terminate()
        for proc in self.procs.values():
            proc.stop()

    def log_tails(self, lines: int = 25) -> str:
        """The last ``lines`` of every started daemon's output (for ``diagnose=``)."""
        return "\n".join(
            f"--- {name} log (last {lines} lines) ---\n" + "".join(p.log[-lines:])
            for name, p in self.procs.items()
        )


# -- event loop blocking ---------------------------------------------------------------------


@dataclass(frozen=True)
class Stall:
    """The loop did not turn for ``seconds``; ``stack``: where its thread was meanwhile."""

    seconds: float
    stack: str


class LoopBlockGuard:
    """Notices an event loop that stops turning for longer than ``threshold`` seconds.

    A watchdog thread posts a no-op to the loop (``call_soon_threadsafe``) every
    ``interval`` while the loop runs; when it is not run within ``threshold``, the loop's
    thread is sampled: a thread parked in the selector's ``select`` is idle, only starved of
    CPU (a loaded machine), and a loop that is not running (between two
    ``run_until_complete``) is not stuck either — neither is counted; any other frame is
    code holding the loop, and the stall, its length and that stack go to ``stalls``. Use
    as a context manager around the code under watch, on the loop's thread.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, threshold: float, interval: float = 0.05
    ) -> None:
        self.loop = loop
        self.threshold = threshold
        self.interval = interval
        self.stalls: list[Stall] = []
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="loop-block-guard", daemon=True)

    def __enter__(self) -> LoopBlockGuard:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.threshold))

    def report(self) -> str:
        """The stalls seen, longest first, each with the stack that held the loop."""
        return "\n".join(
            f"event loop blocked for {s.seconds:.2f} s (> {self.threshold:g} s) at:\n{s.stack}"
            for s in sorted(self.stalls, key=lambda s: -s.seconds)
        )

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.loop.is_running():
                continue  # between two runs (pytest sets fixtures up in between): not stuck
            turned = threading.Event()
            posted = time.monotonic()
            try:
                self.loop.call_soon_threadsafe(turned.set)
            except RuntimeError:  # the loop closed under us: nothing left to watch
                return
            if turned.wait(self.threshold):
                continue
            stack = self._loop_stack() if self.loop.is_running() else None
            while stack is not None and not turned.wait(self.interval):
                if self._stop.is_set() or not self.loop.is_running():
                    break  # measure the stall to its end (or to the end of the watch)
            if stack is not None:
                self.stalls.append(Stall(time.monotonic() - posted, stack))

    def _loop_stack(self) -> str | None:
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        if frame is None or _idle_in_selector(frame):
            return None
        return "".join(traceback.format_stack(frame))


def _idle_in_selector(frame: FrameType) -> bool:
    """The loop's thread is waiting in its selector (epoll/poll/select), not running code."""
    with contextlib.suppress(AttributeError):
        return frame.f_code.co_name in ("select", "poll") and "selectors" in (
            frame.f_code.co_filename
        )
    return False


@contextlib.contextmanager
def no_loop_blocking(threshold: float) -> Iterator[LoopBlockGuard]:
    """``LoopBlockGuard`` on the running loop; AssertionError with the stacks when it
    stalled."""
    with LoopBlockGuard(asyncio.get_running_loop(), threshold) as guard:
        yield guard
    if guard.stalls:
        raise AssertionError(guard.report())
