"""Classifying files in several worker processes, the lines still written in input order.

Each worker process builds its own Classifier once (batches where the model allows), takes
chunks of input items from its own queue, runs `batch.classify_items` on each into a recorder,
and sends the recorded text back on its own pipe, from its own thread (a queue's feeder thread
cost a worker about 0.1 ms of CPU per chunk on the 2-core VM: BENCHMARKS.md, issue 13's follow-up).
The parent waits on every worker's pipe and process sentinel at once, so an answer or a worker's
death wakes it as it happens. It draws the inputs as it needs them, keeps at most
IN_FLIGHT_PER_WORKER chunks per worker outstanding (so memory stays bounded however many files
there are), and writes a chunk's text once every chunk before it is written. Workers ignore
SIGINT: on Ctrl-C the parent stops them and returns a summary of what it wrote. A worker that
dies (a native crash on a hostile file) costs its chunks, which are reported file by file, and
is replaced; what it sent before it died is still written. A worker whose model fails to run
(ModelError) sends that one line instead of a result; the parent raises it, which stops every
worker, and no file is reported as failed. Ctrl-C is taken between chunks, never in the middle
of a write, so the output ends on a whole line and the summary counts exactly the lines written.

Processes are forked where the platform allows (Linux): a fork inherits the imported modules,
so a worker is ready in milliseconds instead of re-importing numpy, Pillow and the interpreter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import sys
import time
from multiprocessing import connection
from typing import Any, Callable, Iterable, Iterator, TextIO

from .batch import BatchSummary, chunked, classify_items
from .classify import Classifier
from .errors import EdgeError, ModelError
from .output import make_writer
from .preprocess import Normalization
from .sources.files import InputItem

logger = logging.getLogger(__name__)

# Chunks sent to a worker and not yet answered: one being classified, the others waiting, so a
# worker never idles while the parent writes.
IN_FLIGHT_PER_WORKER = 3
# Files per message when the model takes one image per invoke: amortises pickling and queueing.
CHUNK_FILES = 32
# While waiting for results, how often the parent looks at its Ctrl-C flag (a worker's answer or
# death wakes it at once).
STOP_POLL_S = 0.5
# How long a worker waits for work before checking that its parent still exists.
PARENT_POLL_S = 1.0
STOP_TIMEOUT_S = 5.0
OUT, ERR = 0, 1
# In place of a chunk's sequence number: the worker could not build its classifier, or its model
# failed to run; the message follows.
SETUP_FAILED = -1
MODEL_FAILED = -2


class WorkerError(EdgeError):
    """A worker process could not start classifying (the message says why)."""


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """What a worker needs to build the run's Classifier itself (picklable, unlike the Classifier)."""

    model_path: str
    threads: int = 1
    backend: str | None = None
    labels_path: str | None = None
    normalization: Normalization | None = None
    batch: int = 1

    def build(self) -> Classifier:
        classifier = Classifier(self.model_path, threads=self.threads, backend=self.backend,
                                labels_path=self.labels_path, normalization=self.normalization)
        classifier.use_batches(self.batch)
        return classifier


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """How results are written: JSON or text, the number of classes, the uncertainty threshold."""

    as_json: bool = False
    top_k: int = 1
    threshold: float = 0.0


def start_method() -> str:
    """fork where available (Linux, the Pi): workers inherit the imports; else the platform default."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin" else \
        multiprocessing.get_start_method()


class _Recorder:
    """Two text streams (out, err) recorded as one list of (stream, text) segments, in write order."""

    def __init__(self) -> None:
        self._segments: list[tuple[int, list[str]]] = []
        self.out = _RecordingStream(self._segments, OUT)
        self.err = _RecordingStream(self._segments, ERR)

    def take(self) -> list[tuple[int, str]]:
        taken = [(stream, "".join(texts)) for stream, texts in self._segments]
        self._segments.clear()
        return taken


class _RecordingStream:
    def __init__(self, segments: list[tuple[int, list[str]]], stream: int):
        self._segments = segments
        self._stream = stream

    def write(self, text: str) -> None:
        segments = self._segments
        if segments and segments[-1][0] == self._stream:
            segments[-1][1].append(text)
        else:
            segments.append((self._stream, [text]))

    def flush(self) -> None:
        pass


def _worker_main(settings: ClassifierSettings, output: OutputSettings, tasks: Any,
                 results: connection.Connection, parent_pid: int) -> None:
    """A worker: build the classifier once, then classify chunks until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    try:
        classifier = settings.build()
    except Exception as error:  # reported by the parent as one line
        if send_answer(results, (SETUP_FAILED, str(error), 0, 0)):
            _wait_for_stop(tasks, parent_pid)
        return
    recorder = _Recorder()
    writer = make_writer(output.as_json, recorder.out, recorder.err)
    clock = time.perf_counter
    while True:
        try:
            task = tasks.get(timeout=PARENT_POLL_S)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the parent was killed: nobody will read the results
                return
            continue
        if task is None:
            return
        sequence, items = task
        summary = BatchSummary()
        try:
            classify_items(classifier, items, writer, output.top_k, output.threshold, clock, summary)
        except ModelError as error:  # the model's fault, not the files': the parent stops the run
            if send_answer(results, (MODEL_FAILED, str(error), 0, 0)):
                _wait_for_stop(tasks, parent_pid)
            return
        if not send_answer(results, (sequence, recorder.take(), summary.classified, summary.failed)):
            return


def send_answer(results: connection.Connection, message: tuple[int, Any, int, int]) -> bool:
    """Send one answer to the parent; False when nobody reads the pipe any more (the parent is gone)."""
    try:
        results.send(message)
    except OSError:  # BrokenPipeError
        return False
    return True


def _wait_for_stop(tasks: Any, parent_pid: int) -> None:
    """After a failure sent to the parent: stay alive, taking no work, until stopped or orphaned.

    The parent raises the failure and stops every worker; this one ends with the others.
    """
    while True:
        try:
            if tasks.get(timeout=PARENT_POLL_S) is None:
                return
        except queue.Empty:
            if os.getppid() != parent_pid:
                return


@dataclasses.dataclass
class _Worker:
    process: Any
    tasks: Any
    results: connection.Connection  # the parent's end of the worker's answers
    in_flight: list[int] = dataclasses.field(default_factory=list)
    results_open: bool = True  # False once the pipe ended: the process is ending, its sentinel follows


def _stopped_reason(exit_code: int | None) -> str:
    if exit_code is not None and exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit code {exit_code}"


class WorkerPool:
    """`workers` processes classifying chunks for `run`; use as a context manager."""

    def __init__(self, settings: ClassifierSettings, output: OutputSettings, workers: int,
                 method: str | None = None):
        self._settings = settings
        self._output = output
        self._size = workers
        self._context = multiprocessing.get_context(method or start_method())
        self._workers: dict[int, _Worker] = {}
        self._next_id = 0
        self._answered = False  # a first answer proves that the workers can build their classifier

    def __enter__(self) -> "WorkerPool":
        try:
            for _ in range(self._size):
                self._start_worker()
        except BaseException:
            self._terminate()
            raise
        return self

    def __exit__(self, exc_type: Any, *exc_info: object) -> None:
        if exc_type is None:
            self._stop()
        else:
            self._terminate()

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers.values()]

    def _start_worker(self) -> None:
        worker_id = self._next_id
        self._next_id += 1
        tasks = self._context.Queue()
        results, sending_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main, name=f"edge-classify worker {worker_id}", daemon=True,
            args=(self._settings, self._output, tasks, sending_end, os.getpid()))
        # A forked child flushes the std streams it inherited when it ends: empty them first so
        # nothing is written twice. SIGINT stays blocked until the child has ignored it.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
        blocked = hasattr(signal, "pthread_sigmask")
        if blocked:
            saved = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, saved)
            # Only the worker keeps the sending end (workers started later never see it): when the
            # worker ends, however it ends, its pipe ends too.
            sending_end.close()
        self._workers[worker_id] = _Worker(process, tasks, results)

    def run(self, items: Iterable[InputItem], out: TextIO, err: TextIO, summary: BatchSummary,
            chunk_size: int, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Classify `items` in chunks of `chunk_size`, writing every line to `out` or `err` in input order.

        Returns early, with `summary.interrupted` set, once `stop_requested()` says so.
        """
        chunks: Iterator[list[InputItem]] = chunked(items, chunk_size)
        streams = (out, err)
        parent_writer = make_writer(self._output.as_json, out, err)
        outstanding: dict[int, list[InputItem]] = {}  # sent, not yet written
        done: dict[int, tuple[list[tuple[int, str]], int, int] | str] = {}
        next_sequence = next_to_write = 0
        limit = IN_FLIGHT_PER_WORKER * self._size
        exhausted = False
        while True:
            if stop_requested():
                summary.interrupted = True
                return
            while not exhausted and len(outstanding) < limit:
                worker = min(self._workers.values(), key=lambda w: len(w.in_flight))
                if len(worker.in_flight) >= IN_FLIGHT_PER_WORKER:
                    break
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                worker.tasks.put((next_sequence, chunk))
                worker.in_flight.append(next_sequence)
                outstanding[next_sequence] = chunk
                next_sequence += 1
            if not outstanding:
                return
            for sequence, answer in self._receive(stop_requested):
                if sequence in outstanding and sequence not in done:
                    done[sequence] = answer
            while next_to_write in done and not stop_requested():
                answer = done.pop(next_to_write)
                chunk = outstanding.pop(next_to_write)
                next_to_write += 1
                if isinstance(answer, str):  # the worker died with this chunk
                    for item in chunk:
                        parent_writer.error(item.path, answer)
                    summary.failed += len(chunk)
                    continue
                segments, classified, failed = answer
                for stream, text in segments:
                    streams[stream].write(text)
                    if stream == ERR:
                        err.flush()
                summary.classified += classified
                summary.failed += failed

    def _receive(self, stop_requested: Callable[[], bool]) -> list[tuple[int, Any]]:
        """The next answers: chunks' results, and the chunks of workers that died (none on a stop)."""
        while True:
            handles: dict[Any, int] = {}
            for worker_id, worker in self._workers.items():
                if worker.results_open:
                    handles[worker.results] = worker_id
                handles[worker.process.sentinel] = worker_id
            ready = connection.wait(list(handles), timeout=STOP_POLL_S)
            answers: list[tuple[int, Any]] = []
            ended: list[int] = []
            for handle in ready:
                worker_id = handles[handle]
                worker = self._workers[worker_id]
                if handle is worker.results:
                    answers.extend(self._read(worker))
                elif worker_id not in ended:
                    ended.append(worker_id)
            for worker_id in ended:
                answers.extend(self._replace_dead_worker(worker_id))
            if answers or stop_requested():
                return answers

    def _read(self, worker: _Worker) -> list[tuple[int, Any]]:
        """The one answer waiting on `worker`'s pipe ([] when the pipe has ended)."""
        try:
            sequence, payload, classified, failed = worker.results.recv()
        except (EOFError, OSError):  # the worker is ending (mid-message if it died sending)
            worker.results_open = False
            return []
        if sequence == SETUP_FAILED:
            raise WorkerError(payload)
        if sequence == MODEL_FAILED:
            raise ModelError(payload)
        if sequence in worker.in_flight:
            worker.in_flight.remove(sequence)
        self._answered = True
        return [(sequence, (payload, classified, failed))]

    def _replace_dead_worker(self, worker_id: int) -> list[tuple[int, Any]]:
        """What a worker that ended sent before it ended, then its chunks reported lost; a new worker."""
        worker = self._workers[worker_id]
        answers: list[tuple[int, Any]] = []
        while worker.results_open and worker.results.poll():
            answers.extend(self._read(worker))
        worker.process.join(STOP_TIMEOUT_S)  # its sentinel says it ended: this reaps it
        reason = _stopped_reason(worker.process.exitcode)
        logger.debug("worker %d (pid %s) %s", worker_id, worker.process.pid, reason)
        if not self._answered:  # no worker got as far as one chunk: replacing it would not help
            raise WorkerError(f"a worker process stopped ({reason}) before classifying anything")
        del self._workers[worker_id]
        worker.tasks.cancel_join_thread()
        worker.tasks.close()
        worker.results.close()
        message = f"not classified: the worker process reading it stopped ({reason})"
        answers.extend((sequence, message) for sequence in worker.in_flight)
        self._start_worker()
        return answers

    def terminate(self) -> None:
        """End every worker now (Ctrl-C)."""
        self._terminate()
        self._workers.clear()

    def _stop(self) -> None:
        """Tell every worker to finish, wait for them, and end any that does not."""
        try:
            for worker in self._workers.values():
                worker.tasks.put(None)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for worker in self._workers.values():
                worker.process.join(max(0.0, deadline - time.monotonic()))
        finally:
            self._terminate()

    def _terminate(self) -> None:
        for worker in self._workers.values():
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self._workers.values():
            worker.process.join(STOP_TIMEOUT_S)
            worker.tasks.cancel_join_thread()
            worker.tasks.close()
            worker.results.close()


def classify_files_parallel(settings: ClassifierSettings, items: Iterable[InputItem], out: TextIO, err: TextIO,
                            output: OutputSettings, workers: int, chunk_size: int,
                            clock: Callable[[], float] = time.perf_counter,
                            on_start: Callable[[list[int]], None] | None = None) -> BatchSummary:
    """Classify `items` in `workers` processes; the same lines, in the same order, as `classify_files`.

    Ctrl-C stops every worker; the summary then counts what was written and says it was
    interrupted. `on_start` hears the worker process ids.
    """
    summary = BatchSummary()
    started = clock()
    try:
        with _sigint_as_flag() as stop_requested, WorkerPool(settings, output, workers) as pool:
            if on_start is not None:
                on_start(pool.pids)
            pool.run(items, out, err, summary, chunk_size, stop_requested)
            if summary.interrupted:
                pool.terminate()
    except KeyboardInterrupt:  # outside the main thread, Ctrl-C still arrives as an exception
        summary.interrupted = True
    summary.seconds = clock() - started
    return summary


@contextlib.contextmanager
def _sigint_as_flag() -> Iterator[Callable[[], bool]]:
    """While inside, Ctrl-C sets a flag (read by the callable yielded) instead of raising anywhere."""
    requested: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda number, frame: requested.append(number))
        previous = signal.SIG_DFL if previous is None else previous
    except ValueError:  # not the main thread: signals cannot be handled here
        yield lambda: False
        return
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)
