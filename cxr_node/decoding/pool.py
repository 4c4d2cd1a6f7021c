"""Pixel decoding off the inference path, in processes that may fail without taking the node along.

JPEG 2000 decoding of a chest radiograph takes about 0.5 s, as long as both model forwards on a
2-core CPU, and the OpenJPEG plug-in holds the GIL throughout, so decoding runs in processes
("spawn": safe next to torch's threads; the children import pydicom/numpy/cv2 only, never torch).
A thread pool remains available (kind="thread") for codecs that release the GIL and for tests.

    pool = DecodePool(limits=DecodeLimits(memory_mb=2048, timeout_s=120))
    futures = [pool.submit(p) for p in paths]   # decoding starts now
    decoded = futures[0].result()               # Decoded(path, image, seconds), or the image's error

What a received image can do to a decoder process, and what happens then (issue 19):
- need more memory than `decoding.memory_limit_mb`: each process limits its own address space
  (RLIMIT_AS, set once it has started, on top of what it then holds), so the decoder's allocation
  fails there (MemoryError -> DecodeBudgetError) or the decoder aborts (the RLE plug-in does);
  it also volunteers to the kernel's OOM killer first (oom_score_adj 1000), so under a container
  or cgroup memory limit a decoder dies, not the node;
- kill its process (abort, segfault, OOM kill, SIGKILL from outside): the process is replaced and
  its image tried again alone, with nothing else decoding next to it; if its process dies again the
  image fails (DecoderDied) and only that image: the others run in their own processes and keep
  their results;
- run longer than `decoding.timeout_s`: its process is killed, as above.
If decoder processes cannot start at all (three in a row die before they are ready: a broken
install, no memory left), the waiting images fail with OSError EAGAIN, a resource failure that
the worker defers with its back-off, instead of waiting forever.
A process that ran out of memory leaves and a fresh one takes its place, so no decode starts in an
address space that a bomb has fragmented. Crashes in a row delay the next start (1 s doubling to
30 s); until a process is up again `health()` says why decoding is not possible (/readyz).

Pool processes die with their parent: each watches its parent's pid and exits when it changes (the
parent was killed, even with SIGKILL), so a `kill -9` of the node leaves no decoders behind.

Errors travel back unchanged when they can (PixelDataError for images that can never be decoded,
OSError for I/O trouble that a retry may fix), so callers keep their policies.
"""

from __future__ import annotations

import collections
import errno
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path

import pydicom

from cxr_node.decoding import openjp2
from cxr_node.decoding.pixels import FloatImage, PixelDataError, dataset_to_float, read_image
from cxr_node.decoding.reduced import Resolution
from cxr_node.errors import NotAnalysable

log = logging.getLogger(__name__)

KINDS = ("process", "thread")


@dataclass(frozen=True)
class Decoded:
    path: str
    image: FloatImage
    seconds: float  # wall time of read + decode + grey-scale pipeline, inside the pool


class DecodeBudgetError(PixelDataError):
    """The image needs more memory or time to decode than the decoder processes are allowed."""


class DecoderDied(PixelDataError):
    """The decoder process died twice while decoding this image, the second time with nothing else next to it."""


@dataclass(frozen=True)
class DecodeLimits:
    memory_mb: int | None = None  # address space a decoder process may add to decode one image; None: no limit
    timeout_s: float | None = None  # a decode running longer is killed; None: no limit


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def decode_file(path: str | Path, resolution: Resolution | None = None) -> Decoded:
    """Read and decode one file to a FloatImage; runs inside the pool.

    resolution: decode DICOM pixel data only as finely as that work needs (None: in full).

    DICOM: pydicom's read errors pass through unchanged (an I/O error may be transient);
    PixelDataError (the image itself cannot be turned into grey levels) names the file.
    PNG/JPEG/TIFF files go through pixels.read_image.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = read_image(path)
    else:
        ds = pydicom.dcmread(path)
        try:
            image = dataset_to_float(ds, resolution)
        except PixelDataError as exc:
            raise PixelDataError(f"{path}: {exc}") from exc
    return Decoded(str(path), image, time.perf_counter() - t0)


def decoder_for(resolution: Resolution | None) -> Callable[[str], Decoded]:
    """The pool's `decode` for a resolution: decode_file with it bound (picklable, for the decoder processes)."""
    return decode_file if resolution is None else partial(decode_file, resolution=resolution)


# -- the decoder process -------------------------------------------------------------------------

DECODER_MODULES = ("openjpeg", "rle", "libjpeg", "jpeg_ls", "pylibjpeg", "pydicom.pixels.decoders.pylibjpeg")


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def limit_address_space(memory_mb: int | None) -> int | None:
    """RLIMIT_AS = what this process maps now + memory_mb; returns the limit in bytes (None: unlimited)."""
    if memory_mb is None:
        return None
    limit = _status_kib("VmSize") * 1024 + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


def _volunteer_for_oom_killer() -> None:
    # Under a memory cgroup the kernel kills the process with the highest score: a decoder, not the node.
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as fh:
            fh.write("1000")
    except OSError:  # not Linux, or a sandbox without /proc
        pass


def _preload_decoders() -> None:
    """Import the codec plug-ins before the limit is set, so that the limit is all for pixels."""
    import importlib

    for name in DECODER_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # an optional plug-in that is not installed
            pass
    openjp2.available()  # loads libopenjp2 (reduced JPEG 2000 decoding) if installed


def _memory_exhausted(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemoryError) or "out of memory" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Peak memory of a decoder process per decoded pixel (decode + grey pipeline + the pickle back):
# at least this for every syntax measured (30-42 B/px; `cxr-node bench decode-memory`, docs/reliability.md).
DECODE_BYTES_PER_PIXEL = 30


def _header_pixels(path: str) -> int | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(ds.get("NumberOfFrames") or 1)
        return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * max(1, frames)
    except Exception:
        return None


def _portable(exc: BaseException, path: str, memory_mb: int | None) -> BaseException:
    """The error to send to the parent: picklable, one line, memory exhaustion named as such.

    Decoders rarely say that an allocation failed (OpenJPEG: "failed to decode image"), so a failed
    decode of an image whose size alone needs more than the limit at the measured cost per pixel is
    reported as what it is.
    """
    if memory_mb is not None and not isinstance(exc, (NotAnalysable, OSError)):
        pixels = _header_pixels(path)
        needs_mb = (pixels or 0) * DECODE_BYTES_PER_PIXEL / 2**20
        if _memory_exhausted(exc) or needs_mb > memory_mb:
            about = f" (~{needs_mb:.0f} MiB for {pixels} pixels)" if needs_mb > memory_mb else ""
            # No path: the job that records it names its image; the storage path is noise there.
            return DecodeBudgetError(f"decoding needs more memory than decoding.memory_limit_mb {memory_mb} MiB{about}")
    text = " ".join(str(exc).split())
    if isinstance(exc, PixelDataError):
        return type(exc)(text)
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{path}: {type(exc).__name__}: {text}")


def _child_main(
    conn: Connection, parent_pid: int, memory_mb: int | None, decode: Callable[[str], Decoded], oom_first: bool
) -> None:
    """A decoder process: decode paths sent by the parent one at a time; leave after a failed one."""
    _exit_with_parent(parent_pid)
    if oom_first:
        _volunteer_for_oom_killer()
    _preload_decoders()
    limit = limit_address_space(memory_mb)
    conn.send(("ready", limit))
    while True:
        try:
            path = conn.recv()
        except (EOFError, OSError):
            return
        if path is None:
            return
        try:
            result = decode(path)
        except BaseException as exc:  # MemoryError too: that is what the limit is for
            error = _portable(exc, path, memory_mb)
            conn.send(("error", error))
            if isinstance(error, DecodeBudgetError):
                return  # a fresh process takes over: no decode starts in a bomb's leftovers
            continue
        conn.send(("done", result))


# -- the parent side -------------------------------------------------------------------------------


class _Task:
    __slots__ = ("path", "future", "deaths", "cause")

    def __init__(self, path: str) -> None:
        self.path = path
        self.future: Future = Future()
        self.deaths = 0  # decoder processes that died while decoding this image
        self.cause = ""  # how the last one ended

    @property
    def alone(self) -> bool:
        """A task whose process died runs again with nothing next to it: if it kills this one too, it is the cause."""
        return self.deaths > 0


class _Child:
    __slots__ = ("process", "conn", "ready", "task", "deadline", "retiring", "killed_for")

    def __init__(self, process, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.ready = False
        self.task: _Task | None = None
        self.deadline: float | None = None
        self.retiring = False  # said it leaves after a failed decode: its exit is no crash
        self.killed_for = ""  # the pool killed it (timeout); what to tell


def _how_it_ended(exitcode: int | None, killed_for: str) -> str:
    if killed_for:
        return killed_for
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


RESTART_BACKOFF_MAX_S = 30.0
STILLBORN_LIMIT = 3  # decoder processes in a row dead before ready: the waiting images are deferred


def restart_delay_s(crashes_in_a_row: int) -> float:
    """Wait before starting a decoder after the n-th crash in a row: none after one, then 1 s doubling to 30 s."""
    return 0.0 if crashes_in_a_row <= 1 else min(RESTART_BACKOFF_MAX_S, 2.0 ** (crashes_in_a_row - 2))


class DecodePool:
    def __init__(
        self,
        workers: int | None = None,
        kind: str = "process",
        limits: DecodeLimits = DecodeLimits(),
        decode: Callable[[str], Decoded] = decode_file,  # runs in the decoder processes: a module-level function
        oom_first: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"decode pool kind {kind!r} must be one of {', '.join(KINDS)}")
        self.kind = kind
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.limits = limits
        self._decode = decode
        self._oom_first = oom_first
        self._clock = clock
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None
        # process kind: the manager thread owns the children; the lock guards the queue and the state
        self._queue: collections.deque[_Task] = collections.deque()
        self._children: list[_Child] = []
        self._manager: threading.Thread | None = None
        self._wake_r: Connection | None = None
        self._wake_w: Connection | None = None
        self._closing = False
        self._crashes = 0  # decoder deaths in a row without a decode that worked
        self._stillborn = 0  # decoder processes in a row that died before they were ready
        self._last_crash = ""
        self._start_after = 0.0  # clock time before which no decoder is started (back-off)
        self.restarts = 0  # decoder processes started to replace one that ended

    # -- public --------------------------------------------------------------------------------
    def submit(self, path: str | Path) -> Future:
        """Start decoding `path`; the future yields a Decoded or raises the decoder's error."""
        if self.kind == "thread":
            return self._thread_pool().submit(self._decode, str(path))
        task = _Task(str(path))
        with self._lock:
            if self._closing:
                raise RuntimeError("decode pool closed")
            self._queue.append(task)
        self._ensure_manager()
        self._wake()
        return task.future

    def decode_many(self, paths: Sequence[str | Path]) -> list[Decoded | BaseException]:
        """Decode all paths in parallel; per path a Decoded or the exception it raised, in order."""
        if self.kind == "thread" and len(paths) == 1:  # nothing to overlap with: skip the pool
            futures = [_done(self._decode, str(paths[0]))]
        else:
            futures = [self.submit(p) for p in paths]
        out: list[Decoded | BaseException] = []
        for f in futures:
            try:
                out.append(f.result())
            except Exception as exc:
                out.append(exc)
        return out

    def warm_up(self, timeout_s: float = 120.0) -> None:
        """Start the decoder processes now (spawn + imports take ~1 s) and wait until one is ready."""
        if self.kind == "thread":
            self._thread_pool()
            return
        self._ensure_manager()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if sum(c.ready for c in self._children) >= self.workers or self._closing:
                    return
            time.sleep(0.05)

    def start(self) -> None:
        """Start the decoder processes in the background (health() says "starting" until one is up)."""
        if self.kind == "process":
            self._ensure_manager()

    def health(self) -> str | None:
        """None while the pool can decode; otherwise one line saying why not (for /readyz)."""
        if self.kind == "thread":
            return None
        with self._lock:
            if self._closing:
                return "decode pool closed"
            if any(c.ready and c.process.is_alive() for c in self._children):
                return None
            if self._last_crash:
                wait_s = max(0.0, self._start_after - self._clock())
                when = f"restarting in {wait_s:.0f} s" if wait_s > 0 else "restarting"
                return f"no decoder process running: {self._last_crash}; {when}"
            # dead, and the manager thread has not reaped it yet: not "starting"
            for c in self._children:
                if c.process.exitcode is not None and not c.retiring:
                    how = _how_it_ended(c.process.exitcode, c.killed_for)
                    return f"no decoder process running: decoder process {c.process.pid} {how}; restarting"
            return "decoder processes starting"

    def pids(self) -> list[int]:
        """Process ids of the decoder processes alive now (process kind)."""
        with self._lock:
            return [c.process.pid for c in self._children if c.process.pid is not None and c.process.is_alive()]

    def close(self) -> None:
        with self._lock:
            self._closing = True
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True, cancel_futures=True)
        if self._manager is not None:
            self._wake()
            self._manager.join(30)
            self._manager = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- thread kind ---------------------------------------------------------------------------
    def _thread_pool(self) -> Executor:
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="cxr-decode")
            return self._threads

    # -- process kind: the manager thread --------------------------------------------------------
    def _ensure_manager(self) -> None:
        with self._lock:
            if self._manager is not None or self._closing:
                return
            self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
            self._manager = threading.Thread(target=self._manage, name="cxr-decode-pool", daemon=True)
            self._manager.start()

    def _wake(self) -> None:
        if self._wake_w is not None:
            try:
                self._wake_w.send_bytes(b"w")
            except OSError:
                pass

    def _manage(self) -> None:
        try:
            while True:
                with self._lock:
                    closing = self._closing
                if closing:
                    break
                self._start_missing()
                self._assign()
                self._wait_and_handle()
        except Exception:  # a bug here must not leave callers waiting forever
            log.exception("decode pool manager failed")
        finally:
            self._shutdown_children()

    def _start_missing(self) -> None:
        if self._clock() < self._start_after:
            return
        ctx = multiprocessing.get_context("spawn")
        while len(self._children) < self.workers:
            parent_conn, child_conn = ctx.Pipe()
            process = ctx.Process(
                target=_child_main,
                args=(child_conn, os.getpid(), self.limits.memory_mb, self._decode, self._oom_first),
                name="cxr-decode",
                daemon=True,
            )
            process.start()
            child_conn.close()
            with self._lock:
                self._children.append(_Child(process, parent_conn))

    def _assign(self) -> None:
        with self._lock:
            while self._queue:
                busy = [c for c in self._children if c.task is not None]
                if any(c.task is not None and c.task.alone for c in busy):
                    return  # a suspect runs alone
                idle = [c for c in self._children if c.ready and c.task is None and not c.retiring]
                if not idle:
                    return
                task = self._queue[0]
                if task.alone and busy:
                    return  # wait until the others are done
                self._queue.popleft()
                if not task.future.running() and not task.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                child = idle[0]
                child.task = task
                child.deadline = self._clock() + self.limits.timeout_s if self.limits.timeout_s else None
                try:
                    child.conn.send(task.path)
                except OSError:
                    pass  # its death is handled when its sentinel fires

    def _next_timeout(self) -> float:
        now, waits = self._clock(), [1.0]
        for c in self._children:
            if c.deadline is not None:
                waits.append(c.deadline - now)
        if self._start_after > now:
            waits.append(self._start_after - now)
        return max(0.01, min(waits))

    def _wait_and_handle(self) -> None:
        assert self._wake_r is not None
        with self._lock:
            children = list(self._children)
        sentinels = {c.process.sentinel: c for c in children}
        conns = {c.conn: c for c in children}
        ready = wait([self._wake_r, *conns, *sentinels], timeout=self._next_timeout())
        if self._wake_r in ready:
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
        for child in children:
            if child.conn in ready:
                self._receive(child)
        for child in children:
            if child.process.sentinel in ready:
                self._ended(child)
        now = self._clock()
        for child in children:
            if child.deadline is not None and now > child.deadline and child.process.is_alive():
                child.killed_for = f"killed after decoding.timeout_s {self.limits.timeout_s:g} s"
                child.process.kill()

    def _receive(self, child: _Child) -> None:
        try:
            while child.conn.poll():
                kind, payload = child.conn.recv()
                if kind == "ready":
                    child.ready = True
                    continue
                task, child.task, child.deadline = child.task, None, None
                if kind == "error" and isinstance(payload, DecodeBudgetError):
                    child.retiring = True  # it leaves (see _child_main)
                if task is None:
                    continue
                if kind == "done":
                    with self._lock:
                        self._crashes = 0
                    task.future.set_result(payload)
                else:
                    task.future.set_exception(payload)
        except (EOFError, OSError):
            pass  # it died; the sentinel says so

    def _ended(self, child: _Child) -> None:
        self._receive(child)  # a result sent just before it left
        child.process.join(5)
        how = _how_it_ended(child.process.exitcode, child.killed_for)
        child.conn.close()
        with self._lock:
            if child in self._children:
                self._children.remove(child)
            if self._closing:
                return
            self.restarts += 1
            if not child.retiring:  # died: a crash, whatever the cause
                self._crashes += 1
                self._last_crash = f"decoder process {child.process.pid} {how}"
                self._start_after = self._clock() + restart_delay_s(self._crashes)
                log.warning("%s%s", self._last_crash, f" while decoding {child.task.path}" if child.task else "")
            self._stillborn = 0 if child.ready else self._stillborn + 1
            if self._stillborn >= STILLBORN_LIMIT:
                self._fail_queued(how)
            task = child.task
            if task is None:
                return
            task.deaths += 1
            task.cause = how
            if task.deaths >= 2:
                limit = self.limits.memory_mb
                under = f", under decoding.memory_limit_mb {limit}" if limit else ""
                task.future.set_exception(
                    DecoderDied(f"the decoder process died twice while decoding this image ({how}{under})")
                )
            else:
                self._queue.appendleft(task)  # again, alone

    def _fail_queued(self, how: str) -> None:
        """Decoder processes die before they are ready (a broken install, no memory to start one): the
        waiting images fail as a resource problem (OSError EAGAIN), so the worker defers them with
        its back-off instead of waiting forever or spending their attempts. Called with the lock held."""
        queued, self._queue = list(self._queue), collections.deque()
        for task in queued:
            if not task.future.done():
                task.future.set_exception(
                    OSError(errno.EAGAIN, f"no decoder process starts ({self._stillborn} in a row, the last {how})")
                )

    def _shutdown_children(self) -> None:
        with self._lock:
            children, self._children = list(self._children), []
            queued, self._queue = list(self._queue), collections.deque()
        for child in children:
            try:
                child.conn.send(None)
            except OSError:
                pass
        for child in children:
            child.process.join(5)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5)
            if child.task is not None and not child.task.future.done():
                child.task.future.set_exception(RuntimeError("decode pool closed"))
        for task in queued:
            if not task.future.done():
                task.future.set_exception(RuntimeError("decode pool closed"))


def _done(fn, *args) -> Future:
    f: Future = Future()
    try:
        f.set_result(fn(*args))
    except Exception as exc:
        f.set_exception(exc)
    return f


PARENT_POLL_S = 0.5


def _exit_with_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """Decoder-process start: a daemon thread ends this process once its parent is gone.

    A watch thread rather than prctl(PR_SET_PDEATHSIG): the death signal fires when the parent
    *thread* that started the process ends, and the pool starts processes from its manager thread.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    if os.getppid() != parent_pid:  # the parent died while this process was starting
        os._exit(1)
    threading.Thread(target=watch, name="cxr-decode-parent-watch", daemon=True).start()


__all__ = [
    "DecodeBudgetError",
    "DecodeLimits",
    "Decoded",
    "DecodePool",
    "DecoderDied",
    "KINDS",
    "decode_file",
    "decoder_for",
    "limit_address_space",
    "restart_delay_s",
]
