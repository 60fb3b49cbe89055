"""The benchmark's throwaway project: revision files, ini files, database.

Two projects share one database and one shared branch (``s1``: a
``public.accounts`` table):

- ``short``: a realistic tenant history of a few tables with foreign keys
  and indexes (5 revisions), ending with the *bench revision*;
- ``long``: the same first revisions, then small steps up to 50 revisions,
  ending with the same kind of bench revision.

The bench revision adds a nullable column and an index: it is the "upgrade
every tenant by one revision" being measured; tenants are created one
revision before it.

Tenant schemas are ``tenant_00001`` ... (found by the ``tenant_`` prefix);
schemas made by the provisioning measurement are ``prov_*`` and are not
tenants of either ini file.
"""
import os
import textwrap

SHARED_REVISION = ("s1", None, """
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True),
                  server_default=sa.func.now(), nullable=False),
    )
    """, 'op.drop_table("accounts")')

# The first tenant revisions: tables with FKs (also to the shared schema),
# indexes, a check constraint, a server default.
BASE_TENANT_REVISIONS = [
    ("""
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer,
                  sa.ForeignKey("public.accounts.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("email", sa.Text, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True),
                  server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_customers_account_id", "customers", ["account_id"])
    """, 'op.drop_table("customers")'),
    ("""
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("customer_id", sa.Integer,
                  sa.ForeignKey("customers.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="new"),
        sa.Column("total", sa.Numeric(12, 2), nullable=False,
                  server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True),
                  server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_orders_customer_created", "orders",
                    ["customer_id", "created_at"])
    op.create_index("ix_orders_status", "orders", ["status"])
    """, 'op.drop_table("orders")'),
    ("""
    op.create_table(
        "order_items",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("order_id", sa.BigInteger,
                  sa.ForeignKey("orders.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("sku", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("price", sa.Numeric(12, 2), nullable=False),
        sa.CheckConstraint("quantity > 0", name="ck_order_items_quantity"),
    )
    op.create_index("ix_order_items_order_id", "order_items", ["order_id"])
    """, 'op.drop_table("order_items")'),
    ("""
    op.add_column("customers", sa.Column("phone", sa.Text))
    op.create_index("ix_customers_phone", "customers", ["phone"])
    """, """
    op.drop_index("ix_customers_phone", table_name="customers")
    op.drop_column("customers", "phone")
    """),
]

# The revision every tenant is upgraded by: a nullable column + an index.
BENCH_REVISION = ("""
    op.add_column("orders", sa.Column("bench_note", sa.Text, nullable=True))
    op.create_index("ix_orders_bench_note", "orders", ["bench_note"])
    """, """
    op.drop_index("ix_orders_bench_note", table_name="orders")
    op.drop_column("orders", "bench_note")
    """)


def _filler_revision(i):
    """Small steps of the long history, cycling through common shapes."""
    kind = i % 3
    if kind == 0:
        return (f"""
        op.create_table(
            "extra_{i}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("customer_id", sa.Integer,
                      sa.ForeignKey("customers.id"), nullable=False),
            sa.Column("value", sa.Text),
        )
        op.create_index("ix_extra_{i}_customer_id", "extra_{i}",
                        ["customer_id"])
        """, f'op.drop_table("extra_{i}")')
    if kind == 1:
        return (f"""
        op.add_column("customers", sa.Column("attr_{i}", sa.Text))
        """, f'op.drop_column("customers", "attr_{i}")')
    return (f"""
    op.add_column("orders", sa.Column("flag_{i}", sa.Boolean,
                  nullable=False, server_default=sa.false()))
    op.create_index("ix_orders_flag_{i}", "orders", ["flag_{i}"])
    """, f"""
    op.drop_index("ix_orders_flag_{i}", table_name="orders")
    op.drop_column("orders", "flag_{i}")
    """)


def tenant_history(length):
    """``[(revision_id, upgrade_code, downgrade_code)]``, the last being the
    bench revision."""
    if length < len(BASE_TENANT_REVISIONS) + 1:
        raise ValueError(
            f"a history has at least {len(BASE_TENANT_REVISIONS) + 1} "
            "revisions")
    bodies = list(BASE_TENANT_REVISIONS)
    for i in range(len(bodies) + 1, length):
        bodies.append(_filler_revision(i))
    bodies.append(BENCH_REVISION)
    return [(f"t{i:02d}", up, down) for i, (up, down) in enumerate(bodies, 1)]


HISTORIES = {"short": 5, "long": 50}


def _revision_file(revision, down_revision, branch, upgrade, downgrade):
    labels = (branch,) if down_revision is None else None

    def indented(code):
        return textwrap.indent(textwrap.dedent(code).strip(), "    ")

    return "\n".join([
        f'"""{branch} revision {revision}',
        "",
        f"Revision ID: {revision}",
        f"Revises: {down_revision or ''}",
        '"""',
        "from alembic import op",
        "import sqlalchemy as sa",
        "",
        f"revision = {revision!r}",
        f"down_revision = {down_revision!r}",
        f"branch_labels = {labels!r}",
        "depends_on = None",
        "",
        "",
        "def upgrade():",
        indented(upgrade),
        "",
        "",
        "def downgrade():",
        indented(downgrade),
        "",
    ])


class Project:
    """An ini file and a migrations folder (made by ``commands.init``)."""

    def __init__(self, root, name, url, history_length):
        from pyramid_tenantmigrate import commands
        from pyramid_tenantmigrate.migrator import TenantMigrator

        self.root = os.path.join(root, name)
        self.name = name
        self.url = url
        self.migrations = os.path.join(self.root, "migrations")
        self.ini = os.path.join(self.root, "app.ini")
        self.settings = {
            "sqlalchemy.url": url,
            "tenantmigrate.script_location": self.migrations,
            "tenantmigrate.tenant_schema_prefix": "tenant_",
        }
        os.makedirs(self.root, exist_ok=True)
        commands.init(TenantMigrator.from_settings(self.settings))
        self._write("shared", *SHARED_REVISION[:2], *SHARED_REVISION[2:])
        self.history = tenant_history(history_length)
        previous = None
        for revision, up, down in self.history:
            self._write("tenant", revision, previous, up, down)
            previous = revision
        self.head = self.history[-1][0]
        self.before_head = self.history[-2][0]
        with open(self.ini, "w") as f:
            f.write("[app:main]\nuse = call:pyramid_tenantmigrate.demo:main\n")
            for key, value in self.settings.items():
                f.write(f"{key} = {value.replace('%', '%%')}\n")

    def _write(self, branch, revision, down_revision, upgrade, downgrade):
        path = os.path.join(self.migrations, "versions", branch,
                            f"{revision}.py")
        with open(path, "w") as f:
            f.write(_revision_file(revision, down_revision, branch, upgrade,
                                   downgrade))

    def migrator(self, **overrides):
        from pyramid_tenantmigrate.migrator import TenantMigrator
        return TenantMigrator.from_settings(dict(self.settings, **overrides))

    @property
    def version_locations(self):
        return [os.path.join(self.migrations, "versions", b)
                for b in ("shared", "tenant")]


def tenant_names(n):
    width = max(5, len(str(n)))
    return [f"tenant_{i:0{width}d}" for i in range(1, n + 1)]
