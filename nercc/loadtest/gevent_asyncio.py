"""Run asyncio coroutines (the project's gRPC client) from gevent greenlets (Locust users) without blocking the hub.

Locust monkey-patches the standard library with gevent, which turns ``threading.Thread`` into greenlets.
``grpc.aio`` starts a completion-queue poller with ``threading.Thread`` that sits in a blocking C call;
as a greenlet it would freeze the whole process. So:

1. :func:`use_native_threads_in_grpc` gives grpc's Cython core a ``threading`` whose ``Thread`` is a real OS
   thread, and the unpatched ``socketpair`` it uses to wake asyncio (call before any ``grpc.aio`` channel);
2. :class:`AsyncioThread` runs one asyncio event loop, with the unpatched epoll selector, in a real OS thread;
3. :meth:`AsyncioThread.run` submits a coroutine to that loop and parks the calling greenlet on a gevent
   ``async_`` watcher, which the loop thread fires when the coroutine is done (``send()`` is thread-safe).
   Other greenlets keep running meanwhile, so U users keep U coroutines in flight.

The loop also counts coroutines in flight (``in_flight``, ``max_in_flight``): the proof, measured where the
gRPC calls are made, that the users really run concurrently.

Outside a gevent-patched process everything still works (plain threads; :meth:`run` blocks the caller).
"""

from __future__ import annotations

import asyncio
import types
from typing import Any, Awaitable, Callable

try:
    from gevent import monkey as _monkey
except ImportError:  # gevent is a Locust dependency; without it there is nothing to cooperate with
    _monkey = None


def _original(module: str, name: str):
    """The standard-library object before gevent patched it (the object itself when nothing is patched)."""
    if _monkey is not None and _monkey.is_module_patched(module):
        return _monkey.get_original(module, name)
    return getattr(__import__(module), name)


def _gevent_active() -> bool:
    return _monkey is not None and _monkey.is_module_patched("threading")


class NativeThread:
    """The part of ``threading.Thread`` grpc uses (target/args/daemon, start, join, is_alive), as an OS thread."""

    def __init__(self, group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None):
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self.name = name or "native-thread"
        self.daemon = daemon
        self._finished = _original("_thread", "allocate_lock")()
        self._finished.acquire()
        self._started = False

    def start(self) -> None:
        if self._started:
            raise RuntimeError("threads can only be started once")
        self._started = True
        _original("_thread", "start_new_thread")(self._bootstrap, ())

    def _bootstrap(self) -> None:
        try:
            if self._target is not None:
                self._target(*self._args, **self._kwargs)
        finally:
            self._finished.release()

    def join(self, timeout: float | None = None) -> None:
        if not self._started:
            raise RuntimeError("cannot join thread before it is started")
        if self._finished.acquire(True, -1 if timeout is None else max(float(timeout), 0.0)):
            self._finished.release()

    def is_alive(self) -> bool:
        return self._started and self._finished.locked()


_grpc_patched = False


def use_native_threads_in_grpc() -> None:
    """Make ``grpc.aio`` start its poller as an OS thread and wake asyncio through an unpatched socket pair.

    Idempotent; a no-op when gevent has not patched ``threading``. Must run before the first aio channel exists.
    """
    global _grpc_patched
    if _grpc_patched or not _gevent_active():
        return
    from grpc._cython import cygrpc

    real_threading = types.SimpleNamespace(**vars(cygrpc.threading))
    real_threading.Thread = NativeThread
    cygrpc.threading = real_threading
    real_socket = types.SimpleNamespace(**vars(cygrpc.socket))
    real_socket.socketpair = _original("socket", "socketpair")
    cygrpc.socket = real_socket
    _grpc_patched = True


class AsyncioThread:
    """One asyncio event loop in its own OS thread; :meth:`run` executes a coroutine there and returns its result."""

    def __init__(self, name: str = "asyncio-loop"):
        use_native_threads_in_grpc()
        selector = _original("selectors", "DefaultSelector")()
        self.loop = asyncio.SelectorEventLoop(selector)
        self.name = name
        self.in_flight = 0
        self.max_in_flight = 0
        self.completed = 0
        self._thread = NativeThread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _counted(self, coro: Awaitable[Any]) -> Any:
        self.in_flight += 1  # only touched inside the loop thread: no lock needed
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await coro
        finally:
            self.in_flight -= 1
            self.completed += 1

    def reset_counters(self) -> None:
        def reset():
            self.max_in_flight = self.in_flight
            self.completed = 0

        self.call(reset)

    def run(self, coro: Awaitable[Any], timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop; the calling greenlet (or thread) waits, the others keep running."""
        if self.loop.is_closed():
            raise RuntimeError(f"{self.name}: event loop is closed")
        future = asyncio.run_coroutine_threadsafe(self._counted(coro), self.loop)
        if _gevent_active():
            import gevent
            from gevent.event import Event

            # Start the watcher before hooking the future: a send() to a stopped libev watcher is lost.
            done = Event()
            watcher = gevent.get_hub().loop.async_()
            watcher.start(done.set)
            try:
                future.add_done_callback(lambda _: watcher.send())
                if not done.wait(timeout):
                    future.cancel()
                    raise TimeoutError(f"{self.name}: no result within {timeout} s")
            finally:
                watcher.stop()
                watcher.close()
            return future.result(0)
        return future.result(timeout)

    def call(self, fn: Callable[[], Any], timeout: float | None = 10.0) -> Any:
        """Run a plain function inside the loop thread (for state owned by the loop)."""

        async def wrapper():
            return fn()

        return self.run(wrapper(), timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop and its thread (pending work is abandoned)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
