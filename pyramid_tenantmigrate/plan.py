"""Planning a run: which schemas are behind, and which revisions each needs.

A plan is computed from one read of every schema's version (see
:mod:`.versions`) before anything is executed. Tenants already at the
destination are set aside here and never enter Alembic. Steps are computed
once per distinct starting revision, not once per tenant: at 10,000 tenants
there are usually one or two distinct starting points.

Execution re-reads each tenant's version inside its own transaction, so a
plan that went stale (another process migrated a tenant meanwhile) still
leads to a correct result.
"""
from dataclasses import dataclass, field

from alembic.script.revision import ResolutionError
from alembic.util import CommandError

from .errors import UsageError

SHARED = "shared"
TENANT = "tenant"
BRANCHES = (SHARED, TENANT)

UPGRADE = "upgrade"
DOWNGRADE = "downgrade"
STAMP = "stamp"


def branch_has_revisions(script, branch):
    """Tell whether the revision map has a branch labelled ``branch``."""
    return bool(branch_heads(script, branch))


def branch_heads(script, branch):
    """The revision ids at the head of ``branch``, sorted (empty when the
    branch has no revision yet)."""
    try:
        revisions = script.revision_map.get_revisions(f"{branch}@heads")
    except (CommandError, ResolutionError):
        return ()
    return tuple(sorted(r.revision for r in revisions))


def is_relative(destination):
    """Tell whether a destination moves relative to each schema
    (``tenant@+1``, ``tenant@-2``)."""
    position = destination.partition("@")[2] or destination
    return any(sign in position for sign in "+-")


def branch_of_revision(script, revision_id):
    """Return the branch label (``shared``/``tenant``) of a revision."""
    try:
        revision = script.get_revision(revision_id)
    except Exception as exc:
        raise UsageError(f"unknown revision {revision_id!r}: {exc}") from None
    if revision is None:
        raise UsageError(f"unknown revision {revision_id!r}")
    labels = set(revision.branch_labels) & set(BRANCHES)
    if len(labels) != 1:
        raise UsageError(
            f"revision {revision_id} is on no branch labelled 'shared' or "
            "'tenant'; every migration must descend from one of the two"
        )
    return labels.pop()


def resolve_destinations(script, operation, target):
    """Turn a command's target into ``[(branch, destination), ...]``.

    The list is in execution order: shared before tenants going up, tenants
    before shared going down (tenant tables may reference shared ones).

    ``head``/``heads`` mean both branches' heads; ``base`` both bases;
    ``shared`` / ``tenant`` that branch's head; ``tenant@<rev>`` or
    ``tenant@+1`` a position on that branch; a bare revision id the branch it
    belongs to.
    """
    destinations = _destinations(script, operation,
                                 (target or "heads").strip())
    for branch, destination in destinations:
        _check_destination(script, branch, destination)
    return destinations


def _check_destination(script, branch, destination):
    position = destination.partition("@")[2] or destination
    heads = branch_heads(script, branch)
    if position == "head" and len(heads) > 1:
        # As Alembic: which head is meant is not for this tool to guess.
        raise UsageError(
            f"the {branch} branch has {len(heads)} heads ({', '.join(heads)})"
            f": write a merge revision (down_revision = {tuple(heads)!r}), "
            f"or name one of them ({branch}@{heads[0]})")
    if position in ("head", "heads", "base") or is_relative(destination):
        return  # relative positions are resolved against each schema
    try:
        revisions = script.get_revisions(destination)
    except (CommandError, ResolutionError) as exc:
        raise UsageError(
            f"unknown revision {destination!r}: {exc}; see "
            "'tenant-migrate <ini> history' for the revisions") from None
    for revision in revisions:
        if branch not in revision.branch_labels:
            raise UsageError(
                f"revision {revision.revision} is not on the {branch} branch")


def _destinations(script, operation, target):
    order = BRANCHES if operation != DOWNGRADE else BRANCHES[::-1]
    present = [b for b in order if branch_has_revisions(script, b)]

    if target in ("head", "heads"):
        if operation == DOWNGRADE:
            raise UsageError("downgrade needs a target below head, e.g. "
                             "'tenant@-1' or 'tenant@base'")
        return [(b, f"{b}@head") for b in present]
    if target == "base":
        return [(b, f"{b}@base") for b in present]
    if target in BRANCHES:
        # A branch without revisions yet (a history of tenant revisions
        # only) has nothing to do, as 'heads' would find.
        return [(target, f"{target}@head")] if target in present else []
    if "@" in target:
        branch, _, position = target.partition("@")
        if branch not in BRANCHES:
            raise UsageError(
                f"unknown branch {branch!r} in {target!r}: use "
                "'shared@...' or 'tenant@...'"
            )
        if not position:
            raise UsageError(f"{target!r} names no revision after '@'")
        return [(branch, target)]
    if target[0] in "+-" or target.lstrip("+-").isdigit():
        raise UsageError(
            f"relative target {target!r} is ambiguous with two branches: "
            f"write 'tenant@{target}' or 'shared@{target}'"
        )
    revision_id = target.split("+")[0].split("-")[0]
    return [(branch_of_revision(script, revision_id), target)]


@dataclass
class SchemaPlan:
    """The work planned for one schema."""

    schema: str
    from_heads: tuple
    to_heads: tuple
    steps: tuple
    exists: bool = True

    @property
    def revisions(self):
        return tuple(step.revision.revision for step in self.steps
                     if hasattr(step, "revision"))


@dataclass
class BranchPlan:
    """Everything a branch's part of a run will do.

    ``pending`` schemas have steps to run; ``current`` ones are already at the
    destination; ``ahead`` ones are past an upgrade's destination (upgrade
    does not go down); ``unplannable`` maps a schema to the reason its
    steps could not be computed (e.g. its version table names a revision
    that no longer exists); ``unreadable`` to why its version could not be
    read.
    """

    branch: str
    operation: str
    destination: str
    pending: list = field(default_factory=list)
    current: list = field(default_factory=list)
    ahead: list = field(default_factory=list)
    unplannable: dict = field(default_factory=dict)
    unreadable: dict = field(default_factory=dict)


class StepPlanner:
    """Computes Alembic steps for a destination, once per starting point."""

    def __init__(self, script, operation, destination):
        self.script = script
        self.operation = operation
        self.destination = destination
        self._cache = {}

    def steps_for(self, heads):
        """Return the steps that lead from ``heads`` to the destination."""
        key = tuple(sorted(heads))
        if key not in self._cache:
            self._cache[key] = self._compute(key)
        return self._cache[key]

    def _compute(self, heads):
        script = self.script
        current = heads or None
        if self.operation == UPGRADE:
            steps = script._upgrade_revs(self.destination, current)
        elif self.operation == DOWNGRADE:
            steps = script._downgrade_revs(self.destination, current)
        else:
            steps = script._stamp_revs(self.destination, heads)
        return tuple(steps)

    def __call__(self, heads, context):
        """Alembic's ``fn`` hook: the steps for the heads Alembic just read."""
        return list(self.steps_for(heads))


def heads_after(heads, steps):
    """Return the version heads a schema will have after ``steps``."""
    result = set(heads)
    for step in steps:
        result.difference_update(step.from_revisions_no_deps)
        result.update(step.to_revisions_no_deps)
    return tuple(sorted(result))


def plan_branch(planner, branch, versions, schemas):
    """Plan ``planner``'s operation for ``schemas`` of ``branch``.

    ``versions`` maps schema names to
    :class:`~pyramid_tenantmigrate.versions.SchemaVersion`.
    """
    plan = BranchPlan(branch, planner.operation, planner.destination)
    heads = branch_heads(planner.script, branch)
    target = _absolute_heads(planner)
    for schema in schemas:
        version = versions[schema]
        if version.problem is not None:
            plan.unreadable[schema] = version.problem
            continue
        schema_plan = SchemaPlan(schema, version.heads, version.heads, (),
                                 exists=version.exists)
        try:
            steps = planner.steps_for(version.heads)
        except Exception as exc:
            if _nothing_beyond(planner, version.heads, heads):
                plan.current.append(schema_plan)
            else:
                plan.unplannable[schema] = (
                    f"cannot plan {planner.operation} to "
                    f"{planner.destination} from "
                    f"{','.join(version.heads) or 'base'}: {exc}")
            continue
        if steps:
            schema_plan.steps = steps
            schema_plan.to_heads = heads_after(version.heads, steps)
            plan.pending.append(schema_plan)
        elif (planner.operation == UPGRADE and target is not None
              and version.heads and set(version.heads) != set(target)):
            plan.ahead.append(schema_plan)
        else:
            plan.current.append(schema_plan)
    return plan


def _absolute_heads(planner):
    """The revision ids an absolute destination names, or ``None``."""
    if is_relative(planner.destination):
        return None
    try:
        return tuple(sorted(r.revision for r in
                            planner.script.get_revisions(planner.destination)
                            if r is not None))
    except Exception:
        return None


def _nothing_beyond(planner, current, heads):
    """A relative step past the end: ``tenant@+1`` at the head, or
    ``tenant@-1`` at base, has nothing to do (not an error)."""
    if not is_relative(planner.destination):
        return False
    if planner.operation == UPGRADE:
        return bool(heads) and set(current) == set(heads)
    return planner.operation == DOWNGRADE and not current
