"""One stage of the live path in its own thread: a generator run by a worker, read through a bounded queue.

reftok-run chains three threads: capture (:class:`reftok_deploy.runtimes.capture.FrameSource`, which drops
the oldest frame of a live source when full), the model (:func:`threaded`, nothing dropped: every block's
tokens are kept) and output (overlay, video, window, token stream) in the caller's thread, which must own
the window. A full queue makes the stage before it wait, so a slow output slows the model instead of
losing tokens, and a live source then drops frames at capture.
"""

from __future__ import annotations

import queue
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
    nothing the worker uses (a runner) is closed under it. ``on_stop`` is called first, to wake a worker
    blocked on its input (a live source that stopped delivering would hold it for its read timeout).
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

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
            getattr(produced, "close", lambda: None)()  # a generator's own finally runs before join() returns

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        if on_stop is not None:
            on_stop()
        worker.join()
