"""Feature processes: a CPU scan decodes, resamples and computes the HPSS-Mel features of
whole recordings in processes of their own, while the scan's process runs the network.

Why processes and not threads: most of the feature work is numpy and numba code that
holds the GIL between calls, so threads would take turns; in processes it overlaps with
the network on the other cores. A worker also starts in under a second, because this
module, decoding and the features import no torch: started before the scan's process
imports torch and loads the model (``fieldmon scan`` does), its first windows are ready
about when the network is. And a decoder that crashes on a damaged file takes only its
worker down: that file is recorded as failed, a new worker takes its place, and the scan
goes on.

A worker is ``python -m fieldmon.scan.feature_workers`` (not multiprocessing, whose
"spawn" runs the caller's main script again in every child: a user's script without an
``if __name__ == "__main__"`` guard would scan again in each). It talks to the scan over
its stdin and stdout, in length-prefixed pickles between these two processes only:

    worker -> scan   ("ready",)                              warmed up
    scan -> worker   task dict, or None                      None: no more, exit
    worker -> scan   ("windows", relative, starts, partial, features)   as it goes
    worker -> scan   ("done", decoded_json)                  the recording ended (see
                                                             DecodedFile.error); then it
                                                             reads its next task

The scan sends each worker its first task as soon as it knows what to scan, before the
worker is ready (the pipe holds it), and the next one when the worker reports "done".
A worker that dies shows as the end of its stdout. A worker ignores Ctrl-C and SIGTERM
(the scan decides when to stop) and exits when its stdin or stdout closes, so it never
outlives the scan, even one killed with SIGKILL.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from fieldmon.scan.discovery import Recording

# Each message carries this many windows (96 KB of features each): small enough that a
# worker never holds much, large enough that pipe round trips cost nothing.
WINDOWS_PER_MESSAGE = 16
# Every library in a worker runs on one thread: the workers and the network share the cores.
_ONE_THREAD = {name: "1" for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "MKL_NUM_THREADS")}
_LENGTH = struct.Struct("<Q")


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(on_cpu: bool) -> int:
    """Feature processes of a CPU scan: half the cores, the other half for the network. On
    2 cores, a second feature process made 12 files of 10 min no faster (fp32 40.3 against
    37.9 s, int8 25.5 against 27.0 s) and took 300 MB more. On a GPU: decoding threads."""
    return max(1, cores() // 2) if on_cpu else 2


class FeatureWorkerError(RuntimeError):
    """The feature processes could not run at all (not one bad file: those fail alone)."""


@dataclass
class _Worker:
    process: subprocess.Popen
    current: Recording | None = None  # the recording it is working on
    started: bool = False  # it said it is ready
    finishing: bool = False  # it was told there is no more
    reader: threading.Thread = field(init=False)


class FeatureWorkers:
    """A pool of up to ``count`` feature processes. Create it as early as possible
    (one worker starts at once, the others when there is more than one recording) and
    :meth:`hand_out` the recordings as soon as they are known; then read :meth:`messages`
    until the pool is no longer :attr:`alive`."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.workers: list[_Worker] = []
        # Messages waiting for the scan: up to 16 per worker (24 MB each) while the scan
        # loads its model; then the workers wait.
        self.inbox: queue.Queue = queue.Queue(maxsize=16 * count)
        self.closing = threading.Event()
        self.restarts_left = 2 * count
        self.waiting: list[Recording] = []  # recordings not yet handed out, last first
        self.task: dict = {}
        self.handed_out = False
        self._spawn()  # the others when there is more than one recording to scan

    def hand_out(self, recordings: list[Recording], task: dict) -> None:
        """What to scan: ``task`` holds the settings of every recording (features, hop,
        channel, tz). Each worker gets its first recording now."""
        self.waiting = list(reversed(recordings))
        self.task = task
        self.handed_out = True
        for worker in list(self.workers):
            self._next_task(worker)
        while self.waiting and len(self.workers) < self.count:
            self._spawn()

    def _next_task(self, worker: _Worker) -> None:
        rec = self.waiting.pop() if self.waiting else None
        worker.current = None if rec is None else rec
        worker.finishing = rec is None
        message = None if rec is None else {**self.task, "recording": _decoded(rec).to_json()}
        try:
            _send(worker.process.stdin, message)
        except OSError:
            pass  # it died; its stdout ends and the reader says so

    def _spawn(self) -> None:
        process = subprocess.Popen([sys.executable, "-m", "fieldmon.scan.feature_workers"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **_ONE_THREAD})
        worker = _Worker(process)
        worker.reader = threading.Thread(target=self._read, args=(worker,), daemon=True)
        worker.reader.start()
        self.workers.append(worker)
        if self.handed_out:
            self._next_task(worker)

    def _read(self, worker: _Worker) -> None:
        """Thread: the worker's messages into the inbox, then None when its stdout ends."""
        while True:
            message = _receive(worker.process.stdout)
            while not self.closing.is_set():
                try:
                    self.inbox.put((worker, message), timeout=0.1)
                    break
                except queue.Full:
                    pass
            if message is None or self.closing.is_set():
                return

    def messages(self, timeout: float):
        """The messages that arrived within ``timeout``: ("windows", relative, starts,
        partial, features) and ("done", DecodedFile). A recording whose worker died
        gives ("done", DecodedFile) with the error, and a new worker takes over."""
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            worker, message = item
            if message is None:
                yield from self._ended(worker)
            elif message[0] == "ready":
                worker.started = True
            elif message[0] == "windows":
                yield message
            else:
                yield "done", _decoded(message[1])
                self._next_task(worker)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _ended(self, worker: _Worker):
        self.workers.remove(worker)
        code = worker.process.wait()
        if worker.finishing:
            return
        if not worker.started:
            raise FeatureWorkerError(f"a feature process exited with code {code} before it started; "
                                     "run 'python -m fieldmon.scan.feature_workers' to see why")
        if worker.current is not None:
            yield "done", _decoded(worker.current, error=f"its feature process stopped (exit code {code}) "
                                                            "while decoding it")
        if self.waiting:
            if self.restarts_left <= 0:
                raise FeatureWorkerError(f"feature processes keep stopping (the last with exit code {code})")
            self.restarts_left -= 1
            self._spawn()

    @property
    def alive(self) -> bool:
        return bool(self.workers)

    def close(self) -> None:
        """End every worker that is still running; what it was doing is not needed."""
        self.closing.set()
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
            worker.process.wait()
        for worker in self.workers:
            worker.reader.join(timeout=1)
            worker.process.stdin.close()
            worker.process.stdout.close()
        self.workers = []


def _decoded(recording: Recording | str, error: str | None = None):
    """A DecodedFile of a recording, or from its JSON. (Imported here, not at the top:
    decoding imports numpy, soundfile and soxr, which the scan's process needs later, and
    the workers are started before anything else.)"""
    from fieldmon.scan.decoding import DecodedFile

    if isinstance(recording, str):
        return DecodedFile.from_json(recording)
    return DecodedFile(recording, error=error)


def _send(stream: BinaryIO, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO):
    """The next message, or None at the end of the stream (also mid-message: the writer died)."""
    try:
        header = stream.read(_LENGTH.size)
        if len(header) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack(header)
        data = stream.read(length)
        return pickle.loads(data) if len(data) == length else None
    except (OSError, ValueError):
        return None


def _work() -> None:
    """A worker's life: warm up, then ask for recordings until told there are none."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Messages go out on the original stdout; anything a library prints goes to stderr.
    messages_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    tasks_in = sys.stdin.buffer

    import numpy as np

    from fieldmon.features import FeatureSettings, hpss_mel
    from fieldmon.recorder import parse_zone
    from fieldmon.scan.decoding import decode_windows

    # numba loads its compiled functions on first use (~0.4 s): done now, while the scan
    # imports torch and loads the model, not when the first recording arrives.
    hpss_mel(np.zeros((1, FeatureSettings().window_samples), np.float32))
    try:
        _send(messages_out, ("ready",))
        while (task := _receive(tasks_in)) is not None:
            features = FeatureSettings.from_dict(task["features"])
            decoded = _decoded(task["recording"])
            tz = None if task["tz"] is None else parse_zone(task["tz"])
            relative = decoded.recording.relative
            for windows in decode_windows(decoded, features.sample_rate, features.window_samples, task["hop"],
                                          task["channel"], tz, batch=WINDOWS_PER_MESSAGE):
                try:
                    values = hpss_mel(windows.samples, features)
                except Exception as exc:  # never expected; the file fails, not the scan
                    decoded.error = f"features failed ({type(exc).__name__}: {exc})"
                    break
                _send(messages_out, ("windows", relative, windows.starts, windows.partial, values))
            _send(messages_out, ("done", decoded.to_json()))
    except OSError:
        return  # the scan ended or stopped: nothing is waiting for this worker's work


if __name__ == "__main__":
    _work()
