"""What each schema runs: a program of replayed and Alembic steps, in order.

A :class:`Program` is made once for every group of schemas that start at
the same revision and go to the same destination. It lists the group's
steps in order; each is either *replayed* (the statements capture
recorded, see :mod:`.capture`) or run *through Alembic* in each schema.
The path is chosen per revision, so one revision that reads the database
does not take the rest of the range with it.

:class:`Programs` makes them (capturing at most once per group) and keeps
them for the life of a run, or of a migrator for provisioning.
"""
import re
import threading
from dataclasses import dataclass, field, replace

from ..plan import heads_after
from .capture import capture_steps

_ADDS_ENUM_VALUE = re.compile(r"\bADD\s+VALUE\b", re.I)
_CREATES_TYPE = re.compile(r"\bCREATE\s+TYPE\b", re.I)


@dataclass(frozen=True)
class ProgramStep:
    """One revision of a program.

    ``replay`` is ``None`` when the revision runs through Alembic;
    otherwise a tuple of ``(in_block, statements)`` parts: statements to
    run in the schema's transaction, or (``in_block``) outside any
    transaction, as ``autocommit_block()`` does. ``reason`` says why a
    revision does not replay. ``memo_before`` / ``memo_after``: what
    Alembic remembered between revisions, before and after this one, as
    capture saw it. ``controls_transaction``: the revision commits or
    rolls back by itself. ``checked``: some replayed statement checks a
    read (it may fail with :data:`.sql.READ_DIFFERS` in a tenant).
    ``in_place``: where a check fails, the revision runs through Alembic
    right there, from a savepoint taken before it in the same transaction
    (see :func:`build_program`). ``captured``: what capture saw
    (:class:`~.capture.CapturedRevision`; what ``lint`` lints), ``None``
    without capture.
    """

    step: object
    revision: str
    heads_after: tuple
    replay: tuple = None
    reason: str = None
    memo_before: dict = None
    memo_after: dict = None
    controls_transaction: bool = False
    checked: bool = False
    in_place: bool = False
    captured: object = field(default=None, repr=False, compare=False)

    @property
    def has_block(self):
        return bool(self.replay) and any(block for block, _ in self.replay)


@dataclass
class Program:
    """The steps of one group of schemas, from ``from_heads`` to
    ``to_heads``."""

    from_heads: tuple
    to_heads: tuple
    steps: tuple = ()
    #: The statement creating the version table (for schemas at base).
    version_table_ddl: str = None
    operation: str = "upgrade"
    stamp: bool = False
    transient: bool = False

    @property
    def revisions(self):
        return tuple(step.revision for step in self.steps)

    @property
    def replayed(self):
        return [step for step in self.steps if step.replay is not None]

    @property
    def needs_session_lock(self):
        """The schema's lock must outlive a commit: some step commits in
        the middle (autocommit block, or a revision committing itself)."""
        return any(step.has_block or step.controls_transaction
                   for step in self.steps)

    @property
    def checked(self):
        """Some replayed step checks what a read answers."""
        return any(step.checked and step.replay is not None
                   for step in self.steps)

    def replaying(self, revision):
        """Whether ``revision`` is one of this program's replayed steps."""
        return any(step.revision == revision and step.replay is not None
                   for step in self.steps)

    def through_alembic_at(self, revisions):
        """This program with ``revisions`` run through Alembic (a checked
        read answered differently there); the others replay as before,
        checked as before: what a revision run through Alembic changed
        reaches a later replayed one only through what it reads (checked)
        or through what Alembic remembers (compared before it runs)."""
        return replace(self, steps=tuple(
            replace(step, replay=None) if step.revision in revisions
            else step for step in self.steps))

    def rest_from(self, heads, steps):
        """The part of this program that runs ``steps`` from ``heads``,
        or ``None`` when they are not its last steps from there."""
        count = len(steps)
        if not 0 < count <= len(self.steps):
            return None
        rest = self.steps[len(self.steps) - count:]
        before = (self.steps[-count - 1].heads_after
                  if count < len(self.steps) else self.from_heads)
        if ([s.revision for s in rest]
                != [s.revision.revision for s in steps]
                or tuple(before) != tuple(heads)):
            return None
        return replace(self, from_heads=tuple(heads), steps=rest)

    def without_savepoints(self):
        """This program with no revision replayed from a savepoint (a
        schema where one failed with 55P04, see :func:`build_program`)."""
        return replace(self, steps=tuple(
            replace(step, in_place=False) for step in self.steps))

    def paths(self):
        """``{revision: "replay" | "alembic"}``."""
        return {step.revision: ("replay" if step.replay is not None
                                else "alembic") for step in self.steps}


def _parts(statements):
    """Group captured statements into (in_block, [sql, ...]) runs, each as
    replayed (checked where the revision used the answer)."""
    parts = []
    for statement in statements:
        if parts and parts[-1][0] == statement.in_block:
            parts[-1][1].append(statement.replay_sql)
        else:
            parts.append((statement.in_block, [statement.replay_sql]))
    return tuple((block, tuple(sqls)) for block, sqls in parts)


def _adds_enum_values_from(captured):
    """``[i]``: a revision from the i-th on adds an enum value in the
    transaction."""
    if captured is None:
        return []
    adds = [any(_ADDS_ENUM_VALUE.search(st.sql) and not st.in_block
                for st in cap.statements) for cap in captured]
    for index in range(len(adds) - 2, -1, -1):
        adds[index] = adds[index] or adds[index + 1]
    return adds


def build_program(steps, from_heads, captured=None, operation="upgrade",
                  version_table_ddl=None):
    """A program for ``steps`` from ``from_heads``; ``captured`` (one
    :class:`~.capture.CapturedRevision` per step) decides what replays,
    without it every step runs through Alembic."""

    heads = tuple(from_heads)
    program_steps = []
    # PostgreSQL does not let an enum value added in the transaction be
    # used when its type was created inside a subtransaction (55P04): no
    # savepoint around a revision creating a type when it or a later one
    # adds an enum value in the transaction (in an autocommit block, the
    # value commits at once). One added through Alembic where capture saw
    # none fails the same way: the executor then tries the schema again
    # without savepoints.
    adds_values_from = _adds_enum_values_from(captured)
    for index, step in enumerate(steps):
        heads = heads_after(heads, [step])
        revision = step.revision.revision
        cap = captured[index] if captured is not None else None
        if cap is None:
            program_steps.append(ProgramStep(step, revision, heads))
            continue
        replay = _parts(cap.statements) if cap.replayable else None
        checked = any(st.check is not None for st in cap.statements)
        program_steps.append(ProgramStep(
            step, revision, heads, replay=replay, reason=cap.reason,
            memo_before=cap.memo_before, memo_after=cap.memo_after,
            controls_transaction=cap.controls_transaction, checked=checked,
            captured=cap,
            # Commits nothing by itself: a savepoint before it undoes
            # exactly what it did.
            in_place=(checked and replay is not None
                      and not any(block for block, _ in replay)
                      and not cap.controls_transaction
                      and not (adds_values_from[index] and any(
                          _CREATES_TYPE.search(st.sql)
                          for st in cap.statements)))))
    return Program(tuple(from_heads), heads, tuple(program_steps),
                   version_table_ddl=version_table_ddl, operation=operation)


def stamp_program(from_heads, to_heads, version_table_ddl=None):
    """A program that only sets the version table (``stamp``)."""
    return Program(tuple(from_heads), tuple(to_heads), (),
                   version_table_ddl=version_table_ddl, operation="stamp",
                   stamp=True)


class Programs:
    """Programs by (operation, starting heads, steps), made once each.

    ``replay`` false (the setting, or a branch that never replays) makes
    programs that run every step through Alembic, without capture.
    Thread-safe: workers of a run ask for programs when a schema moved
    since planning.
    """

    def __init__(self, migrator, replay=True):
        self.migrator = migrator
        self.replay = replay
        self._programs = {}
        self._lock = threading.Lock()
        self._making = {}

    def get(self, operation, from_heads, steps, to_heads, branch="tenant"):
        key = (operation, tuple(from_heads),
               tuple(getattr(s, "revision", None) and s.revision.revision
                     for s in steps), tuple(to_heads))
        with self._lock:
            program = self._programs.get(key)
            if program is not None:
                return program
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                program = self._programs.get(key)
            if program is None:
                program = self._make(operation, from_heads, steps, to_heads,
                                     branch)
                if not program.transient:
                    with self._lock:
                        self._programs[key] = program
        return program

    def _make(self, operation, from_heads, steps, to_heads, branch):
        migrator = self.migrator
        ddl = migrator.version_table_ddl()
        if operation == "stamp":
            return stamp_program(from_heads, to_heads, ddl)
        captured = None
        if self.replay and branch == "tenant" and steps:
            captured = capture_steps(migrator, steps, from_heads, branch)
        program = build_program(steps, from_heads, captured, operation, ddl)
        # Capture waited too long for a lock another transaction held (a
        # sign-up's own request, say): this program runs through Alembic,
        # and the next one captures again.
        program.transient = bool(captured) and any(
            c.transient for c in captured)
        return program

    def discard(self, program):
        """Forget ``program``: the next :meth:`get` for it captures again
        (what it read has changed since)."""
        with self._lock:
            for key, kept in list(self._programs.items()):
                if kept is program:
                    del self._programs[key]

    def __len__(self):
        return len(self._programs)
