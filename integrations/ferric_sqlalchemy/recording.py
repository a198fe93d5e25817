"""What happens while the cache computes one result: the statements that ran, the objects they loaded.

A result may only be stored if every table it was built from had its
generation read first, and if every object in it was loaded by this very
computation (an object already in the Session may hold older or unflushed
values). A Recording collects both; recordings nest (an eager load computed,
or served from cache, inside another) and an inner one reports to the outer.
"""

import contextvars
from contextlib import contextmanager

from sqlalchemy.orm.attributes import instance_state


class Recording:
    """Tables read, per statement in order, objects loaded fresh, and anything that makes the result unstorable."""

    __slots__ = ("statements", "fresh", "reason", "executed")

    def __init__(self):
        self.executed = 0  # statements sent to the database, writes (an autoflush) included
        self.statements: list[frozenset] = []
        self.fresh: set = set()  # InstanceStates loaded or refreshed from rows during this computation
        self.reason: str | None = None

    def add_tables(self, tables, reason=None) -> None:
        self.statements.append(tables)
        if reason is not None and self.reason is None:
            self.reason = reason

    @property
    def tables(self) -> frozenset:
        return frozenset().union(*self.statements)

    @property
    def later_tables(self) -> frozenset:
        """Tables read by statements after the first (eager loads)."""
        return frozenset().union(*self.statements[1:])


class Recorder:
    """The recording of the current thread or task, if the cache is computing a result there."""

    def __init__(self, shapes):
        self._shapes = shapes
        self._current = contextvars.ContextVar(f"ferric_sqlalchemy_recording_{id(self)}", default=None)

    def current(self) -> Recording | None:
        return self._current.get()

    @contextmanager
    def record(self):
        outer = self._current.get()
        recording = Recording()
        token = self._current.set(recording)
        try:
            yield recording
        finally:
            self._current.reset(token)
            if outer is not None:
                outer.statements.extend(recording.statements)
                outer.executed += recording.executed
                outer.fresh |= recording.fresh
                if recording.reason is not None and outer.reason is None:
                    outer.reason = recording.reason

    def saw(self, context) -> None:
        """A statement is about to run (engine event): note the tables it reads."""
        recording = self._current.get()
        if recording is None:
            return
        recording.executed += 1
        if context is None:
            recording.add_tables(frozenset(), "a textual statement ran")
            return
        if context.isinsert or context.isupdate or context.isdelete:
            return  # an autoflush's writes: the transaction check refuses to store what they touched
        tables, reason = self._shapes.tables_of_compiled(context.compiled)
        recording.add_tables(tables, reason)

    def loaded(self, state, *_args) -> None:
        """InstanceEvents.load / refresh, listened to with ``raw=True``: ``state`` (an InstanceState) was
        populated from a row just now."""
        recording = self._current.get()
        if recording is not None:
            recording.fresh.add(state)

    def served(self, tables, objects) -> None:
        """A nested result came from the cache: its tables and objects count as read and loaded here."""
        recording = self._current.get()
        if recording is not None:
            recording.statements.append(frozenset(tables))
            recording.fresh.update(instance_state(obj) for obj in objects)
