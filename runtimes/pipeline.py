"""One stage of the live path in its own thread: a generator run by a worker, read through a bounded queue.

reftok-run chains three threads: capture (:class:`reftok_deploy.runtimes.capture.FrameSource`, which drops
the oldest frame of a live source when full), the model (:func:`threaded`, nothing dropped: every block's
tokens are kept) and output (overlay, video, window, token stream) in the caller's thread, which must own
the window. A full queue makes the stage before it wait, so a slow output slows the model instead of
losing tokens, and a live source then drops frames at capture.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def threaded(produce: Callable[[threading.Event], Iterator[T]], depth: int = 4,
             name: str = "reftok-stage", on_stop: Callable[[], None] | None = None) -> Iterator[T]:
    """Yield what ``produce(stop)`` yields, computed in a worker thread up to ``depth`` items ahead.

    An exception in the worker is raised here, in the consumer's thread, with its traceback. When the
    consumer stops early (an error, Ctrl-C, ``close()``), ``stop`` is set; ``produce`` should check it
    before each unit of work. The consumer then waits for the worker to finish the unit it is in, so
    nothing the worker uses (a runner) is closed under it, through one more Ctrl-C (two more leave it).
    ``on_stop`` is called first, to wake a worker blocked on its input (a live source that stopped
    delivering would hold it for its read timeout).
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    finished = threading.Event()  # set by the worker as its very last step

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        produced = None
        try:
            produced = produce(stop)
            for item in produced:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which re-raises it)
            put(_Failure(exc))
        finally:
            try:
                getattr(produced, "close", lambda: None)()  # a generator's own finally runs before close() returns
            finally:
                finished.set()

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    in_flight: BaseException | None = None
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    except BaseException as exc:
        in_flight = exc
        raise
    finally:
        interrupted = _stop_and_wait(stop, on_stop, finished)
        worker.join()
        # A Ctrl-C while waiting is raised only if nothing else is on its way out: an error stays the
        # error, and a consumer closing the stage (GeneratorExit) is already stopping, the Ctrl-C's wish.
        if interrupted and in_flight is None:
            raise KeyboardInterrupt


def _stop_and_wait(stop: threading.Event, on_stop: Callable[[], None] | None, done: threading.Event) -> bool:
    """Stop the worker and wait until it has finished (``done``, set as its last step) through one more
    Ctrl-C, so the runner it uses is not closed under a running block (which can crash the process).
    Not ``Thread.join``: in Python 3.11 an interrupted join reports the thread finished while it runs.
    Ctrl-C twice while waiting gives up on a worker that does not finish. Returns whether Ctrl-C came."""
    steps = [stop.set] + ([on_stop] if on_stop is not None else [])
    interrupted = False
    while True:
        try:
            while steps:
                steps.pop(0)()
            while not done.wait(0.1):
                pass
            return interrupted
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            print("waiting for the block in progress to finish (Ctrl-C again to quit without waiting)",
                  file=sys.stderr, flush=True)
