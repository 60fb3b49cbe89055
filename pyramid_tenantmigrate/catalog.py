"""A schema's catalog as canonical rows, compared for many schemas at once.

``doctor`` compares every tenant's tables with those its migrations build
in a scratch schema (the *reference*). Reading 10,000 catalogs object by
object would take minutes, so the server describes each schema with
canonical rows and does the comparing:

- :func:`read_references` reads a reference: its rows, and its *body*
  (every row as one line, the lines in a fixed order, as one text);
- :func:`read_digests` reduces, in one statement for any number of
  schemas, each one's rows to a *digest* (a count and two hashes, from
  raw catalog fields where that is cheaper); a schema whose digest is its
  reference's is what its reference is;
- :func:`check_schemas` answers, in one statement for any number of
  schemas, whether each one's body is its reference's body, and a
  *shape* (an md5) by which drifting schemas that look alike are grouped;
- :func:`read_objects` returns the rows of the few schemas that differ,
  and :func:`compare` tells how, in Python.

A row is ``(kind, name, fields)``, made of names and definitions, never of
OIDs. Most fields are read straight from the catalog tables, joined for
all the schemas at once: a column's type is ``format_type``'s, an index is
its method and key columns (with their operator class, collation and
order), included columns, options and validity; a primary key or unique
constraint is its index's columns; a foreign key is written from its
columns and the table it refers to as ``pg_get_constraintdef`` writes it.
Only expressions are written out by the server's own functions: defaults
(``pg_get_expr``), checks (``pg_get_constraintdef``, once for each
distinct expression, table and columns: it opens the table), views,
triggers, functions, index expressions and predicates.
(``pg_get_indexdef`` costs 15-30 us an index, ``pg_get_constraintdef``
15 us a foreign key and 30 us a check: at ten indexes a tenant, 1.5 to
3 s for 10,000 tenants, where reading the same from ``pg_index`` takes
about 0.6 s.)

Definitions are written with ``search_path`` set to ``pg_catalog`` alone,
so the server qualifies every other name, whatever the session's path:
``public.accounts``, and the schema's own objects as ``tenant_a.notes`` in
the tenant and ``"tenantmigrate-doctor-…".notes`` in the reference. So a
tenant matches when its body is the reference's with the reference's
qualifier (``"tenantmigrate-doctor-…".``, a random name that occurs nowhere
else) replaced by the tenant's (``tenant_a.``): exact, however the tenant
is named, and a foreign key into another tenant's schema still shows.
(Taking the tenant's own name out of its definitions instead would be
guesswork: in schema ``a``, ``a.id`` may be a column of the alias ``a``.)
The shape does take it out, where it follows a space, a bracket, a comma,
a quote or ``::``: it only groups drifting schemas, one of each group is
read in full.

Left out: the version table and everything on it, objects that belong to
an extension, and ``NOT NULL`` constraints (PostgreSQL 18 lists them; the
column's nullability says the same). See :data:`FIELDS` for what each
kind of row holds. Not compared: column order, privileges, owners,
comments, row-level security policies, statistics objects, operator
class parameters of index columns, which column owns a sequence, a
domain's collation, a range type's collation, operator class and
functions, and rows (sequence values included).
"""
import functools
import re

from sqlalchemy import text

#: What is compared: the fields of each kind of row, in order.
FIELDS = {
    "table": ("kind", "persistence", "row security", "partition key",
              "inherits", "partition bound"),
    "view": ("kind", "definition"),
    "column": ("type", "nullability", "default", "identity", "generated",
               "collation"),
    "constraint": ("type", "definition"),
    "index": ("table", "definition", "state"),
    "sequence": ("type", "start", "increment", "minimum", "maximum",
                 "cache", "cycle"),
    "type": ("kind", "definition"),
    "trigger": ("definition", "enabled"),
    "function": ("definition",),
}

#: The order differences are listed in: a missing table before its
#: columns, columns before the indexes on them.
KIND_ORDER = tuple(FIELDS)

#: Characters after which the server writes a qualified name: a space, a
#: line break, ``(``, ``[``, ``,``, a quote (``'tenant_a.notes_id_seq'
#: ::regclass``), ``::`` (a cast to the schema's own type), or the start
#: of a field (the separator).
_BEFORE_QUALIFIER = (" ", "\n", "\t", "(", "[", ",", "'", ":", "\x1f")


def _sql_char(char):
    if char.isprintable():
        return "'" + char.replace("'", "''") + "'"
    return f"chr({ord(char)})"


def _unqualified(expression):
    """SQL for ``expression`` with the schema's qualifier (the
    ``qualifier`` column of ``t``) taken out where it follows one of
    :data:`_BEFORE_QUALIFIER`, or starts the text. For sorting and
    grouping only (see the module docstring)."""
    sql = f"(chr(31) || ({expression}))"
    for char in _BEFORE_QUALIFIER:
        before = _sql_char(char)
        sql = f"replace({sql}, {before} || t.qualifier, {before})"
    return f"substr({sql}, 2)"


# Each part of the UNION ALL yields (nsp, qualifier, parent, kind, name,
# fields, sort_name): ``qualifier`` is the schema's (see ``_DIGESTS``);
# ``parent`` is the table a column, constraint, index, trigger or owned
# sequence belongs to, so that a missing table is reported once, not with
# each of its parts (the owner of a sequence is looked up only for
# ``:details``). It is not in the body: the fields say it. ``sort_name``
# orders a function by its name without the schema's qualifier (its
# argument types carry it); NULL: by its name. pg_class is read once for
# all the schemas (``relations``: their rows of it; it has no index on the
# schema, see :data:`_FOUND`); the other catalog tables through their index
# on the relation (the ``OFFSET 0`` subqueries keep the planner from
# scanning them whole), so that a statement's work is its share of the
# tenants, whatever their number.
_OBJECTS = """
WITH target AS MATERIALIZED (
    SELECT n.oid AS nsp, n.nspname AS schema_name,
           pg_catalog.quote_ident(n.nspname) || '.' AS qualifier
    FROM unnest(CAST(:schemas AS text[])) AS s(name)
    JOIN pg_catalog.pg_namespace n ON n.nspname = s.name
),{members}
relations AS MATERIALIZED (
    SELECT r.nsp, r.qualifier, c.oid, c.relname::text AS relname,
           c.relkind, c.relpersistence, c.relrowsecurity,
           c.relforcerowsecurity, c.relpartbound, c.relispartition,
           c.relam, c.reloptions, c.relhastriggers
    FROM {relations}
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'c', 'i', 'I')
      AND c.relname <> :version_table
),
-- What has columns, indexes, constraints or triggers: the parts below
-- scan these, not every relation.
tables AS MATERIALIZED (
    SELECT * FROM relations WHERE relkind IN ('r', 'p', 'f', 'm', 'v')
),
columns AS MATERIALIZED (
    SELECT t.nsp, t.qualifier, t.oid AS relid, t.relname, t.relkind,
           a.attnum,
           a.attname, a.atttypid, a.atttypmod, a.attnotnull,
           a.attidentity, a.attgenerated, a.attcollation, a.atthasdef
    FROM tables t
    CROSS JOIN LATERAL (
        SELECT a.attnum, a.attname, a.atttypid, a.atttypmod, a.attnotnull,
               a.attidentity, a.attgenerated, a.attcollation, a.atthasdef
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
        OFFSET 0) a
    WHERE t.relkind IN ('r', 'p', 'f', 'm')
),
indexes AS MATERIALIZED (
    SELECT t.nsp, t.relname, i.*
    FROM tables t
    CROSS JOIN LATERAL (
        SELECT i.indexrelid, i.indrelid, i.indkey, i.indclass,
               i.indcollation, i.indoption, i.indnkeyatts, i.indisunique,
               i.indnullsnotdistinct, i.indisvalid, i.indexprs, i.indpred
        FROM pg_catalog.pg_index i
        WHERE i.indrelid = t.oid
        OFFSET 0) i
    WHERE t.relkind IN ('r', 'p', 'm')
),
constraints AS MATERIALIZED (
    SELECT t.nsp, t.qualifier, t.oid AS relid, t.relname, k.*
    FROM tables t
    CROSS JOIN LATERAL (
        SELECT k.oid, k.conname, k.contype, k.condeferrable,
               k.condeferred, k.convalidated, k.conindid, k.conkey,
               k.confrelid, k.confkey, k.confupdtype, k.confdeltype,
               k.confmatchtype, k.confdelsetcols, k.connoinherit,
               k.conexclop, k.conbin{extra_constraint_columns}
        FROM pg_catalog.pg_constraint k
        WHERE k.conrelid = t.oid AND k.contype <> 'n'
        OFFSET 0) k
    WHERE t.relkind IN ('r', 'p', 'f')
),
-- A foreign key as pg_get_constraintdef writes it, from the catalog
-- (pg_get_constraintdef looks every name up in turn: 15 us a key), with
-- the names of its columns and of the table it refers to taken from
-- those of the schemas, or of the few tables outside them it refers to.
-- Keys it would write otherwise (PostgreSQL 18's PERIOD and NOT
-- ENFORCED, SET NULL or SET DEFAULT on some columns) are left to it.
key_columns AS (
    SELECT k.oid, k.relid AS attrelid, u.attnum, u.position, false AS refd
    FROM constraints k
    CROSS JOIN LATERAL unnest(CAST(k.conkey AS int2[]))
        WITH ORDINALITY AS u(attnum, position)
    WHERE k.contype = 'f' AND k.confdelsetcols IS NULL{plain_foreign_key}
  UNION ALL
    SELECT k.oid, k.confrelid, u.attnum, u.position, true
    FROM constraints k
    CROSS JOIN LATERAL unnest(CAST(k.confkey AS int2[]))
        WITH ORDINALITY AS u(attnum, position)
    WHERE k.contype = 'f' AND k.confdelsetcols IS NULL{plain_foreign_key}
),
outside_columns AS (
    SELECT a.attrelid AS relid, a.attnum, a.attname,
           pg_catalog.quote_ident(n.nspname) || '.' AS qualifier,
           c.relname::text AS relname
    FROM (SELECT DISTINCT k.confrelid FROM constraints k
          WHERE k.contype = 'f'
          EXCEPT SELECT r.oid FROM tables r) o
    JOIN pg_catalog.pg_class c ON c.oid = o.confrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (
        SELECT a.attrelid, a.attnum, a.attname
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = o.confrelid AND a.attnum > 0
        OFFSET 0) a
),
foreign_keys AS MATERIALIZED (
    SELECT kc.oid,
           'FOREIGN KEY (' || string_agg(
               pg_catalog.quote_ident(c.attname), ', '
               ORDER BY kc.position) FILTER (WHERE NOT kc.refd)
           || ') REFERENCES ' || min(c.qualifier || pg_catalog.quote_ident(
               c.relname)) FILTER (WHERE kc.refd)
           || '(' || string_agg(
               pg_catalog.quote_ident(c.attname), ', '
               ORDER BY kc.position) FILTER (WHERE kc.refd) || ')'
           AS definition
    FROM key_columns kc
    JOIN (SELECT relid, attnum, attname, qualifier, relname FROM columns
          UNION ALL
          SELECT relid, attnum, attname, qualifier, relname
          FROM outside_columns) c
      ON c.relid = kc.attrelid AND c.attnum = kc.attnum
    GROUP BY kc.oid
),
-- Check constraints written once for each distinct input of
-- pg_get_constraintdef (it opens the table for its column names: 30 us a
-- check): the expression, the flags, the table's columns.
check_inputs AS MATERIALIZED (
    SELECT k.oid, CAST(ARRAY[
               k.conbin::text, k.relname, k.connoinherit::text,
               k.condeferrable::text, k.condeferred::text,
               k.convalidated::text{extra_check_inputs},
               (SELECT CAST(array_agg(ARRAY[c.attnum::text, c.attname]
                                      ORDER BY c.attnum) AS text)
                FROM pg_catalog.pg_attribute c
                WHERE c.attrelid = k.relid AND c.attnum > 0
                  AND NOT c.attisdropped)] AS text) AS input
    FROM constraints k
    WHERE k.contype = 'c'
),
checks AS MATERIALIZED (
    SELECT i.input, pg_catalog.pg_get_constraintdef(i.oid) AS definition
    FROM (SELECT DISTINCT ON (input) input, oid FROM check_inputs
          ORDER BY input, oid) i
),
index_keys AS MATERIALIZED (
    SELECT i.indexrelid, string_agg(
        CASE WHEN k.attnum = 0 THEN '(expression)'
            ELSE pg_catalog.quote_ident(c.attname) END
        || CASE WHEN i.indcollation[k.position - 1]
                     NOT IN (0, coalesce(c.attcollation, 100))
                THEN ' COLLATE '
                     || i.indcollation[k.position - 1]::regcollation::text
                ELSE '' END
        || CASE WHEN NOT opc.opcdefault
                THEN ' ' || CASE WHEN opc.opcnamespace =
                                     'pg_catalog'::regnamespace THEN ''
                                ELSE (SELECT pg_catalog.quote_ident(nspname)
                                      FROM pg_catalog.pg_namespace
                                      WHERE oid = opc.opcnamespace) || '.'
                                END
                     || pg_catalog.quote_ident(opc.opcname)
                ELSE '' END
        || CASE i.indoption[k.position - 1] & 3
                WHEN 1 THEN ' DESC NULLS LAST' WHEN 2 THEN ' NULLS FIRST'
                WHEN 3 THEN ' DESC' ELSE '' END,
        ', ' ORDER BY k.position) FILTER (WHERE k.position <= i.indnkeyatts)
        AS keys,
        string_agg(pg_catalog.quote_ident(c.attname), ', '
                   ORDER BY k.position)
            FILTER (WHERE k.position > i.indnkeyatts) AS included
    FROM indexes i
    CROSS JOIN LATERAL unnest(CAST(i.indkey AS int2[]))
        WITH ORDINALITY AS k(attnum, position)
    LEFT JOIN columns c ON c.relid = i.indrelid AND c.attnum = k.attnum
    LEFT JOIN pg_catalog.pg_opclass opc
      ON opc.oid = i.indclass[k.position - 1]
    GROUP BY i.indexrelid
),
objects AS (
    SELECT t.nsp, t.qualifier, NULL::text AS parent, 'table' AS kind,
           t.relname AS name,
           ARRAY[
               CASE t.relkind WHEN 'r' THEN 'table'
                   WHEN 'p' THEN 'partitioned table'
                   ELSE 'foreign table' END,
               CASE t.relpersistence WHEN 'u' THEN 'unlogged'
                   ELSE 'logged' END,
               CASE WHEN t.relforcerowsecurity THEN 'forced'
                   WHEN t.relrowsecurity THEN 'enabled'
                   ELSE 'disabled' END,
               CASE WHEN t.relkind = 'p'
                   THEN pg_catalog.pg_get_partkeydef(t.oid) END,
               (SELECT string_agg(i.inhparent::regclass::text, ', '
                                  ORDER BY i.inhseqno)
                FROM pg_catalog.pg_inherits i
                WHERE i.inhrelid = t.oid),
               CASE WHEN t.relispartition
                   THEN pg_catalog.pg_get_expr(t.relpartbound, t.oid) END
           ] AS fields,
           NULL::text AS sort_name
    FROM tables t
    WHERE t.relkind IN ('r', 'p', 'f')
  UNION ALL
    SELECT t.nsp, t.qualifier, NULL, 'view', t.relname,
           ARRAY[CASE t.relkind WHEN 'v' THEN 'view'
                     ELSE 'materialized view' END,
                 pg_catalog.pg_get_viewdef(t.oid)],
           NULL
    FROM tables t
    WHERE t.relkind IN ('v', 'm')
  UNION ALL
    SELECT c.nsp, c.qualifier, c.relname, 'column',
           c.relname || '.' || c.attname,
           ARRAY[pg_catalog.format_type(c.atttypid, c.atttypmod),
                 CASE WHEN c.attnotnull THEN 'NOT NULL' ELSE 'NULL' END,
                 pg_catalog.pg_get_expr(d.adbin, CASE WHEN c.attgenerated
                     <> '' THEN d.adrelid ELSE 0 END),
                 CASE c.attidentity WHEN 'a' THEN 'ALWAYS'
                     WHEN 'd' THEN 'BY DEFAULT' END,
                 CASE c.attgenerated WHEN 's' THEN 'STORED'
                     WHEN 'v' THEN 'VIRTUAL' END,
                 CASE WHEN c.attcollation <> ty.typcollation
                     THEN c.attcollation::regcollation::text END],
           NULL
    FROM columns c
    JOIN pg_catalog.pg_type ty ON ty.oid = c.atttypid
    LEFT JOIN LATERAL (
        SELECT d.adbin, d.adrelid
        FROM pg_catalog.pg_attrdef d
        WHERE c.atthasdef AND d.adrelid = c.relid AND d.adnum = c.attnum
        OFFSET 0) d ON true
    WHERE c.relkind IN ('r', 'p', 'f')
  UNION ALL
    SELECT k.nsp, k.qualifier, k.relname, 'constraint',
           k.relname || '.' || k.conname,
           ARRAY[CASE k.contype WHEN 'p' THEN 'primary key'
                     WHEN 'u' THEN 'unique' WHEN 'f' THEN 'foreign key'
                     WHEN 'c' THEN 'check' WHEN 'x' THEN 'exclusion'
                     ELSE k.contype::text END,
                 CASE WHEN k.contype IN ('p', 'u') THEN
                     CASE k.contype WHEN 'p' THEN 'PRIMARY KEY ('
                         ELSE 'UNIQUE (' END || ik.keys || ')'
                     || coalesce(' INCLUDE (' || ik.included || ')', '')
                     || CASE WHEN k.condeferrable THEN ' DEFERRABLE'
                         ELSE '' END
                     || CASE WHEN k.condeferred THEN ' INITIALLY DEFERRED'
                         ELSE '' END
                 WHEN fk.definition IS NOT NULL THEN fk.definition
                     || CASE k.confmatchtype WHEN 'f' THEN ' MATCH FULL'
                            WHEN 'p' THEN ' MATCH PARTIAL' ELSE '' END
                     || coalesce(' ON UPDATE ' || CASE k.confupdtype
                            WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE'
                            WHEN 'n' THEN 'SET NULL'
                            WHEN 'd' THEN 'SET DEFAULT' END, '')
                     || coalesce(' ON DELETE ' || CASE k.confdeltype
                            WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE'
                            WHEN 'n' THEN 'SET NULL'
                            WHEN 'd' THEN 'SET DEFAULT' END, '')
                     || CASE WHEN k.condeferrable THEN ' DEFERRABLE'
                            ELSE '' END
                     || CASE WHEN k.condeferred THEN ' INITIALLY DEFERRED'
                            ELSE '' END
                     || CASE WHEN NOT k.convalidated THEN ' NOT VALID'
                            ELSE '' END
                 ELSE coalesce(ch.definition,
                               pg_catalog.pg_get_constraintdef(k.oid)) END],
           NULL
    FROM constraints k
    LEFT JOIN index_keys ik
      ON ik.indexrelid = k.conindid AND k.contype IN ('p', 'u')
    LEFT JOIN foreign_keys fk ON fk.oid = k.oid
    LEFT JOIN check_inputs ci ON ci.oid = k.oid
    LEFT JOIN checks ch ON ch.input = ci.input
  UNION ALL
    SELECT i.nsp, ic.qualifier, i.relname, 'index', ic.relname,
           ARRAY[i.relname,
                 CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END
                 || am.amname || ' (' || ik.keys || ')'
                 || coalesce(' INCLUDE (' || ik.included || ')', '')
                 || coalesce(' EXPRESSIONS ' || pg_catalog.pg_get_expr(
                        i.indexprs, i.indrelid), '')
                 || CASE WHEN i.indnullsnotdistinct
                     THEN ' NULLS NOT DISTINCT' ELSE '' END
                 || coalesce(' WITH (' || array_to_string(ic.reloptions,
                                                         ', ') || ')', '')
                 || coalesce(' WHERE ' || pg_catalog.pg_get_expr(
                        i.indpred, i.indrelid), ''),
                 CASE WHEN i.indisvalid THEN 'valid' ELSE 'invalid' END],
           NULL
    FROM indexes i
    JOIN relations ic ON ic.oid = i.indexrelid
    JOIN pg_catalog.pg_am am ON am.oid = ic.relam
    JOIN index_keys ik ON ik.indexrelid = i.indexrelid
  UNION ALL
    SELECT t.nsp, t.qualifier, CASE WHEN :details THEN (
               SELECT owner.relname
               FROM pg_catalog.pg_depend dep
               JOIN pg_catalog.pg_class owner ON owner.oid = dep.refobjid
               WHERE dep.classid = 'pg_catalog.pg_class'::regclass
                 AND dep.objid = t.oid AND dep.objsubid = 0
                 AND dep.refclassid = 'pg_catalog.pg_class'::regclass
                 AND dep.deptype IN ('a', 'i')
               LIMIT 1) END,
           'sequence', t.relname,
           ARRAY[pg_catalog.format_type(s.seqtypid, NULL),
                 s.seqstart::text, s.seqincrement::text, s.seqmin::text,
                 s.seqmax::text, s.seqcache::text,
                 CASE WHEN s.seqcycle THEN 'CYCLE' ELSE 'NO CYCLE' END],
           NULL
    FROM relations t
    CROSS JOIN LATERAL (
        SELECT s.seqtypid, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
               s.seqcache, s.seqcycle
        FROM pg_catalog.pg_sequence s
        WHERE s.seqrelid = t.oid
        OFFSET 0) s
    WHERE t.relkind = 'S'
  UNION ALL
    SELECT t.nsp, t.qualifier, NULL, 'type', ty.typname,
           ARRAY[CASE ty.typtype WHEN 'e' THEN 'enum'
                     WHEN 'd' THEN 'domain' WHEN 'r' THEN 'range'
                     ELSE 'composite' END,
                 CASE ty.typtype
                 WHEN 'e' THEN (
                     SELECT array_agg(e.enumlabel
                                      ORDER BY e.enumsortorder)::text
                     FROM pg_catalog.pg_enum e
                     WHERE e.enumtypid = ty.oid)
                 WHEN 'd' THEN
                     pg_catalog.format_type(ty.typbasetype, ty.typtypmod)
                     || CASE WHEN ty.typnotnull THEN ' NOT NULL' ELSE '' END
                     || coalesce(' DEFAULT ' || pg_catalog.pg_get_expr(
                            ty.typdefaultbin, 0), '')
                     || coalesce((
                         SELECT string_agg(' CONSTRAINT '
                             || pg_catalog.quote_ident(k.conname) || ' '
                             || pg_catalog.pg_get_constraintdef(k.oid),
                             '' ORDER BY k.conname)
                         FROM pg_catalog.pg_constraint k
                         WHERE k.contypid = ty.oid AND k.contype <> 'n'), '')
                 WHEN 'r' THEN (
                     SELECT pg_catalog.format_type(r.rngsubtype, NULL)
                     FROM pg_catalog.pg_range r
                     WHERE r.rngtypid = ty.oid)
                 ELSE (
                     SELECT string_agg(pg_catalog.quote_ident(a.attname)
                         || ' ' || pg_catalog.format_type(a.atttypid,
                                                          a.atttypmod),
                         ', ' ORDER BY a.attnum)
                     FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = ty.typrelid AND a.attnum > 0
                       AND NOT a.attisdropped)
                 END],
           NULL
    FROM {types}
    WHERE (ty.typtype IN ('e', 'd', 'r')
           OR ty.typrelid IN (SELECT oid FROM relations
                              WHERE relkind = 'c'))
      AND NOT EXISTS (
          SELECT 1 FROM pg_catalog.pg_depend dep
          WHERE dep.classid = 'pg_catalog.pg_type'::regclass
            AND dep.objid = ty.oid AND dep.deptype = 'e')
  UNION ALL
    SELECT t.nsp, t.qualifier, t.relname, 'trigger',
           t.relname || '.' || tg.tgname,
           ARRAY[pg_catalog.pg_get_triggerdef(tg.oid),
                 CASE tg.tgenabled WHEN 'D' THEN 'disabled'
                     WHEN 'R' THEN 'replica only' WHEN 'A' THEN 'always'
                     ELSE 'enabled' END],
           NULL
    FROM tables t
    CROSS JOIN LATERAL (
        SELECT tg.oid, tg.tgname, tg.tgenabled
        FROM pg_catalog.pg_trigger tg
        WHERE tg.tgrelid = t.oid AND NOT tg.tgisinternal
        OFFSET 0) tg
    WHERE t.relkind IN ('r', 'p', 'f', 'v') AND t.relhastriggers
  UNION ALL
    SELECT t.nsp, t.qualifier, NULL, 'function',
           p.proname || '('
               || pg_catalog.pg_get_function_identity_arguments(p.oid)
               || ')',
           ARRAY[CASE WHEN p.prokind = 'a'
                     THEN 'aggregate '
                          || pg_catalog.pg_get_function_result(p.oid)
                     ELSE pg_catalog.pg_get_functiondef(p.oid) END],
           """ + _unqualified(
               "p.proname || '(' || "
               "pg_catalog.pg_get_function_identity_arguments(p.oid) || ')'"
           ) + """
    FROM {functions}
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_depend dep
        WHERE dep.classid = 'pg_catalog.pg_proc'::regclass
          AND dep.objid = p.oid AND dep.deptype = 'e')
)"""

# A schema's body: one line per row, its fields joined by the unit
# separator (NULL: the record separator), so that putting one qualifier
# for another in a body changes nothing else (an array's text form would
# quote a field with a '"' in it). Sorted by kind, then name without the
# schema's qualifier (a function's argument types carry it), in the C
# collation: the same order in the reference and in each tenant.
#: A row of ``objects`` as one line of a body.
_LINE = ("o.kind || chr(31) || o.name || chr(31) "
         "|| array_to_string(o.fields, chr(31), chr(30))")

_BODIES = """,
bodies AS MATERIALIZED (
    SELECT t.schema_name, t.qualifier, coalesce(b.body, '') AS body
    FROM target t
    LEFT JOIN (
        SELECT o.nsp, string_agg(
                   """ + _LINE + """,
                   chr(10) ORDER BY o.kind COLLATE "C",
                   coalesce(o.sort_name, o.name) COLLATE "C",
                   o.name COLLATE "C") AS body
        FROM objects o
        GROUP BY o.nsp) b ON b.nsp = t.nsp
)"""

_READ_BODIES = _BODIES + """
SELECT schema_name, qualifier, body FROM bodies
"""

# ``:expected`` holds, for each schema, the position of its reference in
# ``:reference_bodies`` / ``:reference_qualifiers`` (1-based).
_CHECK = _BODIES + f"""
SELECT t.schema_name, t.body = w.body AS matches,
       CASE WHEN t.body <> w.body
           THEN md5({_unqualified('t.body')}) END AS shape
FROM bodies t
JOIN unnest(CAST(:schemas AS text[]), CAST(:expected AS int[]))
     AS s(name, reference) ON s.name = t.schema_name
JOIN unnest(CAST(:reference_bodies AS text[]),
            CAST(:reference_qualifiers AS text[]))
     WITH ORDINALITY AS r(body, qualifier, reference)
     ON r.reference = s.reference
CROSS JOIN LATERAL (
    SELECT replace(r.body, r.qualifier, t.qualifier) AS body) w
"""

# A schema's *digest*: its rows reduced to a count and two 64-bit hashes,
# each the bit_xor of its rows' hashes (no two rows are equal: each names
# its object), so that nothing is sorted or joined into one text. Tables,
# views, sequences, types, triggers and functions (one row in ten) are
# hashed as the lines of the body (the parts of ``objects`` above; the
# planner prunes the others). Columns, constraints and indexes are hashed
# as records of their raw catalog fields (numbers, arrays of numbers,
# node trees), a third cheaper than writing their definitions. Each raw
# field stands for what the definition written from it shows, or more: a
# key is its column numbers, and each column's row has its number and
# name; a primary key, unique or exclusion constraint has its index's
# name (PostgreSQL renames one with the other), and that index's row its
# definition; a foreign key names a table of the schema by name, any other
# by OID (the reference is in the same database). So equal digests mean
# equal bodies. Equal bodies may have different digests (columns in
# another order, an operator class or a collation of the schema's own,
# named by OID): that only sends the schema to the exact check. Node
# trees are read without ``:location`` (the place in the statement that
# made them, which PostgreSQL before 17 keeps: another schema name before
# it moves it), and written out where they name an object by a large OID
# (see :func:`_tree`). The schema's own qualifier is marked as the
# reference's is (see :func:`_marked`).
def _marked(expression, qualifier):
    """SQL for the text ``expression`` with the schema's ``qualifier``
    replaced by chr(29) and ``1``, once any chr(29) in it is followed by
    ``0``: a text is marked the same in every schema, and two texts
    differently (a qualifier never starts with ``0``)."""
    return (f"replace(replace({expression}, chr(29), chr(29) || '0'), "
            f"{qualifier}, chr(29) || '1')")


def _tree(tree, relation, qualifier):
    """SQL for the node tree ``tree`` in a digest: as stored, without
    ``:location`` (see :data:`_BEFORE_17`); written out by ``pg_get_expr``
    and marked instead when it holds a number of five digits or more: the
    OID of an object made by initdb or after it (an enum, a type or a
    function of the schema's own, whose OID is the tenant's, not the
    reference's; or a collation, or a large type modifier, which are the
    same in both and only cost the writing)."""
    stripped = f"{{strip_from}}CAST({tree} AS text){{strip_to}}"
    written = _marked(f"pg_catalog.pg_get_expr({tree}, {relation})",
                      qualifier)
    return (f"CASE WHEN {stripped} ~ '[0-9]{{5}}' THEN chr(29) || {written} "
            f"ELSE {stripped} END")


_DIGESTS = (""",
lines AS (
    SELECT o.nsp, hashtextextended(o.line, 0) AS first,
           hashtextextended(o.line, 1) AS second
    FROM (
        SELECT o.nsp, """ + _marked(_LINE, "o.qualifier") + """
                   COLLATE "C" AS line
        FROM objects o
        WHERE o.kind IN ('table', 'view', 'sequence', 'type', 'trigger',
                         'function')) o
  UNION ALL
    SELECT r.nsp, hash_record_extended(r.fields, 0),
           hash_record_extended(r.fields, 1)
    FROM (
        SELECT c.nsp, ROW(
                   text 'column', c.relname, c.attnum, c.attname,
                   """ + _marked(
                       "pg_catalog.format_type(c.atttypid, c.atttypmod)",
                       "c.qualifier") + """,
                   c.attnotnull, c.attidentity, c.attgenerated,
                   c.attcollation,
                   """ + _marked(
                       "pg_catalog.pg_get_expr(d.adbin, CASE WHEN "
                       "c.attgenerated <> '' THEN d.adrelid ELSE 0 END)",
                       "c.qualifier") + """) AS fields
        FROM columns c
        LEFT JOIN LATERAL (
            SELECT d.adbin, d.adrelid
            FROM pg_catalog.pg_attrdef d
            WHERE c.atthasdef AND d.adrelid = c.relid
              AND d.adnum = c.attnum
            OFFSET 0) d ON true
      UNION ALL
        SELECT k.nsp, ROW(
                   text 'constraint', k.relname, k.conname, k.contype,
                   k.condeferrable, k.condeferred, k.convalidated,
                   k.conkey, k.confkey, (
                       SELECT CASE WHEN r.relnamespace = k.nsp
                           THEN chr(29) || r.relname ELSE r.oid::text END
                       FROM pg_catalog.pg_class r
                       WHERE r.oid = k.confrelid),
                   k.confupdtype, k.confdeltype, k.confmatchtype,
                   k.confdelsetcols, k.connoinherit, k.conexclop,
                   """ + _tree("k.conbin", "k.relid", "k.qualifier") + """
                   {extra_digest_fields})
        FROM constraints k
      UNION ALL
        SELECT i.nsp, ROW(
                   text 'index', ic.relname, i.relname, ic.relam, i.indkey,
                   i.indclass, i.indcollation, i.indoption, i.indnkeyatts,
                   i.indisunique, i.indnullsnotdistinct, i.indisvalid,
                   ic.reloptions,
                   """ + _tree("i.indexprs", "i.indrelid", "ic.qualifier")
                   + """,
                   """ + _tree("i.indpred", "i.indrelid", "ic.qualifier")
                   + """)
        FROM indexes i
        JOIN relations ic ON ic.oid = i.indexrelid
        OFFSET 0) r
)
SELECT t.schema_name, coalesce(d.lines, 0), coalesce(d.first, 0),
       coalesce(d.second, 0)
FROM target t
LEFT JOIN (
    SELECT nsp, count(*) AS lines, bit_xor(first) AS first,
           bit_xor(second) AS second
    FROM lines
    GROUP BY nsp) d ON d.nsp = t.nsp
""")

_ROWS = """
SELECT t.schema_name, t.qualifier, o.kind, o.name, o.parent, o.fields
FROM target t
LEFT JOIN objects o ON o.nsp = t.nsp
"""

def _in_schema(catalog, alias, namespace):
    """``{way: FROM clause}`` naming each schema ``t`` and its rows of
    ``catalog`` (``alias``; ``namespace`` is their schema's column), for
    each way of :data:`_FOUND`."""
    return {
        "scanned": f"""target t
    JOIN pg_catalog.{catalog} {alias} ON {alias}.{namespace} = t.nsp""",
        "looked_up": f"""members t
    CROSS JOIN LATERAL (
        SELECT {alias}.*
        FROM pg_catalog.{catalog} {alias}
        WHERE t.classid = 'pg_catalog.{catalog}'::regclass
          AND {alias}.oid = t.objid AND {alias}.{namespace} = t.nsp
        OFFSET 0) {alias}""",
    }


_TYPES = _in_schema("pg_type", "ty", "typnamespace")
_FUNCTIONS = _in_schema("pg_proc", "p", "pronamespace")

#: How a statement finds its schemas' relations, types and functions.
#: pg_class, pg_type and pg_proc have no index on the schema: a statement
#: for many schemas scans each once (``scanned``; at 10,000 tenants, 50-60
#: ms a statement, whatever the number of schemas). One for up to
#: :data:`LOOK_UP_UNTIL` schemas (references, tenants that differ,
#: ``--tenant``, a small fleet's shares) finds them through pg_depend's
#: index on the referenced object instead (``looked_up``: about 10 ms for
#: one schema; past about a thousand, the lookups cost more than the
#: scans). Each table, view, sequence, standalone type and function
#: depends on its schema (PostgreSQL records it when it makes one, and
#: moves it with ``SET SCHEMA``); a composite type's relation is found
#: through its type, an index through its table. An OID is only unique in
#: its catalog: each lookup is made in the member's.
_FOUND = {
    "scanned": {
        "{members}": "",
        "{relations}": """target r
    JOIN pg_catalog.pg_class c ON c.relnamespace = r.nsp""",
        "{types}": _TYPES["scanned"],
        "{functions}": _FUNCTIONS["scanned"],
    },
    "looked_up": {
        "{members}": """
members AS MATERIALIZED (
    SELECT t.nsp, t.qualifier, d.classid, d.objid
    FROM target t
    CROSS JOIN LATERAL (
        SELECT d.classid, d.objid
        FROM pg_catalog.pg_depend d
        WHERE d.refclassid = 'pg_catalog.pg_namespace'::regclass
          AND d.refobjid = t.nsp AND d.refobjsubid = 0
          AND d.deptype = 'n'
        OFFSET 0) d
),""",
        "{relations}": """members r
    CROSS JOIN LATERAL (
        SELECT r.objid AS oid
        WHERE r.classid = 'pg_catalog.pg_class'::regclass
      UNION ALL
        SELECT i.indexrelid
        FROM pg_catalog.pg_index i
        WHERE r.classid = 'pg_catalog.pg_class'::regclass
          AND i.indrelid = r.objid
      UNION ALL
        SELECT ty.typrelid
        FROM pg_catalog.pg_type ty
        WHERE r.classid = 'pg_catalog.pg_type'::regclass
          AND ty.oid = r.objid AND ty.typrelid <> 0) m
    CROSS JOIN LATERAL (
        SELECT c.*
        FROM pg_catalog.pg_class c
        WHERE c.oid = m.oid AND c.relnamespace = r.nsp
        OFFSET 0) c""",
        "{types}": _TYPES["looked_up"],
        "{functions}": _FUNCTIONS["looked_up"],
    },
}

#: Up to this many schemas, a statement looks their objects up (see
#: :data:`_FOUND`).
LOOK_UP_UNTIL = 500

#: What PostgreSQL 18 adds to pg_constraint that a definition shows
#: (``NOT ENFORCED``, ``PERIOD``): before it, nothing.
_SINCE_18 = {
    "{extra_constraint_columns}": ", k.conenforced, k.conperiod",
    "{plain_foreign_key}": " AND k.conenforced AND NOT k.conperiod",
    "{extra_check_inputs}": ", k.conenforced::text",
    "{extra_digest_fields}": ", k.conenforced, k.conperiod",
}


#: Before PostgreSQL 17, a node tree keeps where in its statement each
#: node was (``:location``; since, -1): another schema name before it
#: moves it, so digests take it out (7-9% of the statement's time; since
#: 17, nothing to take out).
_BEFORE_17 = {
    "{strip_from}": "regexp_replace(",
    "{strip_to}": ", ' \\:location -?[0-9]+', '', 'g')",
}


@functools.cache
def _statement(name, major, found):
    """The statement ``name`` (``_ROWS``, ``_READ_BODIES``, ``_DIGESTS``,
    ``_CHECK``), after the objects, for a server of version ``major``,
    finding objects as ``found`` says (a key of :data:`_FOUND`)."""
    sql = _OBJECTS + globals()[name]
    for placeholder, since_18 in _SINCE_18.items():
        sql = sql.replace(placeholder, since_18 if major >= 18 else "")
    for placeholder, before_17 in _BEFORE_17.items():
        sql = sql.replace(placeholder, before_17 if major < 17 else "")
    for placeholder, source in _FOUND[found].items():
        sql = sql.replace(placeholder, source)
    return text(sql)


def _major(connection):
    return (connection.dialect.server_version_info or (0,))[0]


def _execute(connection, name, schemas, version_table, details=False,
             **parameters):
    """Run the statement ``name`` for ``schemas``, finding their objects
    the way that is cheaper for that many (see :data:`_FOUND`)."""
    schemas = list(schemas)
    found = "looked_up" if len(schemas) <= LOOK_UP_UNTIL else "scanned"
    return connection.execute(
        _statement(name, _major(connection), found),
        {"schemas": schemas, "version_table": version_table,
         "details": details, **parameters})


#: Every definition names objects outside pg_catalog with their schema.
#: The sorts and hashes of 10,000 schemas' rows fit in memory with more
#: than the default 4 MB (spilling to disk doubled their time). No JIT:
#: the planner's cost for these statements is far above
#: ``jit_above_cost``, and compiling them took 0.35-0.55 s a statement on
#: a PostgreSQL 15 server with JIT, five times what running one for 300
#: tenants takes. No merge joins: the planner guesses a few thousand rows
#: where there are 85,000 columns, and sorted them all to join a foreign
#: key's few (a hash join: 5% of the statement less).
_PATH = ("SET LOCAL search_path TO pg_catalog; "
         "SET LOCAL work_mem = '64MB'; SET LOCAL jit = off; "
         "SET LOCAL enable_mergejoin = off")


class SchemaObjects(dict):
    """One schema's rows: ``{(kind, name): fields}``; ``parents`` maps a
    row's key to the table it belongs to; ``qualifier`` is the schema's
    name as the server writes it before an object's (``tenant_a.``)."""

    def __init__(self, qualifier):
        super().__init__()
        self.qualifier = qualifier
        self.parents = {}
        #: The body and the digest (only read for references).
        self.body = self.digest = None

    def renamed(self, qualifier):
        """These rows as the server would write them in the schema whose
        qualifier is ``qualifier``."""
        def swap(value):
            return (value.replace(self.qualifier, qualifier)
                    if value is not None else None)

        other = SchemaObjects(qualifier)
        for (kind, name), fields in self.items():
            key = (kind, swap(name))
            other[key] = tuple(swap(f) for f in fields)
            if (kind, name) in self.parents:
                other.parents[key] = self.parents[kind, name]
        return other


def read_objects(connection, schemas, version_table):
    """``{schema: SchemaObjects}`` for those of ``schemas`` that exist.
    Call it in a transaction (it sets ``search_path`` for it)."""
    connection.exec_driver_sql(_PATH)
    rows = _execute(connection, "_ROWS", schemas, version_table,
                    details=True)
    objects = {}
    for schema, qualifier, kind, name, parent, fields in rows:
        found = objects.get(schema)
        if found is None:
            found = objects[schema] = SchemaObjects(qualifier)
        if kind is not None:
            found[kind, name] = tuple(fields)
            if parent is not None:
                found.parents[kind, name] = parent
    return objects


def read_references(connection, schemas, version_table):
    """``{schema: SchemaObjects}`` with each one's ``body``: what
    :func:`check_schemas` compares other schemas with. Call it in a
    transaction (it sets ``search_path`` for it)."""
    objects = read_objects(connection, schemas, version_table)
    rows = _execute(connection, "_READ_BODIES", schemas, version_table)
    for schema, _, body in rows:
        objects[schema].body = body
    for schema, digest in read_digests(connection, schemas,
                                       version_table).items():
        objects[schema].digest = digest
    return objects


def read_digests(connection, schemas, version_table):
    """``{schema: digest}`` for those of ``schemas`` that exist: a
    schema's catalog reduced to three numbers, equal in two schemas only
    if their bodies are (see ``_DIGESTS``). Call it in a transaction (it
    sets ``search_path`` for it)."""
    connection.exec_driver_sql(_PATH)
    rows = _execute(connection, "_DIGESTS", schemas, version_table)
    return {schema: tuple(digest) for schema, *digest in rows}


def check_schemas(connection, expected, version_table):
    """``{schema: shape}`` for the schemas of ``expected`` (``{schema: a
    reference from read_references}``) that exist: ``None`` when the
    schema's body is its reference's, else an md5 of its rows without its
    own name, equal for schemas that differ alike. One statement for all.
    Call it in a transaction (it sets ``search_path`` for it)."""
    connection.exec_driver_sql(_PATH)
    references = list({id(r): r for r in expected.values()}.values())
    position = {id(r): index for index, r in enumerate(references, 1)}
    schemas = list(expected)
    rows = _execute(
        connection, "_CHECK", schemas, version_table,
        expected=[position[id(expected[s])] for s in schemas],
        reference_bodies=[r.body for r in references],
        reference_qualifiers=[r.qualifier for r in references])
    return {schema: (None if matches else shape)
            for schema, matches, shape in rows}


#: A field value longer than this (a view's or a function's definition)
#: is not repeated in a difference's text, only said to differ.
_SHOWN = 80

MISSING = "missing"
EXTRA = "extra"
DIFFERS = "differs"


def compare(found, reference):
    """How the rows ``found`` (a tenant's :class:`SchemaObjects`) differ
    from ``reference`` (its revision's, as built in a scratch schema): a
    sorted list of dicts with ``kind``, ``name``, ``problem`` (``missing``,
    ``extra``, ``differs``), and for ``differs`` the ``field`` with the
    ``found`` and ``expected`` values; each has its ``text``, one line for
    people, where the tenant's own name is left out (``notes``, not
    ``tenant_a.notes``), so that tenants that differ alike read alike.

    The parts of a table that is missing or extra (its columns, indexes,
    constraints, triggers, owned sequences) are not listed again."""
    expected = reference.renamed(found.qualifier)
    differences = []
    missing_tables = {name for (kind, name) in expected
                      if kind == "table" and ("table", name) not in found}
    extra_tables = {name for (kind, name) in found
                    if kind == "table" and ("table", name) not in expected}
    for key in expected.keys() - found.keys():
        if expected.parents.get(key) not in missing_tables:
            differences.append((key, MISSING, None, None, None))
    for key in found.keys() - expected.keys():
        if found.parents.get(key) not in extra_tables:
            differences.append((key, EXTRA, None, None, None))
    for key in found.keys() & expected.keys():
        labels = FIELDS[key[0]]
        for index, (value, wanted) in enumerate(zip(found[key],
                                                    expected[key])):
            if value != wanted:
                differences.append((key, DIFFERS, labels[index], value,
                                    wanted))
    unqualified = _unqualifier(found.qualifier)
    described = [_describe(unqualified, *difference)
                 for difference in differences]
    described.sort(key=lambda d: (KIND_ORDER.index(d["kind"]), d["name"],
                                  d["text"]))
    return described


def _unqualifier(qualifier):
    pattern = re.compile(
        "(^|[" + re.escape("".join(_BEFORE_QUALIFIER)) + "])"
        + re.escape(qualifier))

    def unqualified(value):
        return None if value is None else pattern.sub(r"\1", value)
    return unqualified


def _describe(unqualified, key, problem, field, found, expected):
    kind, name = key[0], unqualified(key[1])
    difference = {"kind": kind, "name": name, "problem": problem}
    if problem == MISSING:
        what = "missing"
    elif problem == EXTRA:
        what = "not in the migrations"
    else:
        found, expected = unqualified(found), unqualified(expected)
        difference.update(field=field, found=found, expected=expected)
        shown = [_shown(found), _shown(expected)]
        if max(map(len, shown)) > _SHOWN or "\n" in "".join(shown):
            what = f"{field} differs"
        else:
            what = f"{field} {shown[0]}, expected {shown[1]}"
    difference["text"] = f"{kind} {name}: {what}"
    return difference


def _shown(value):
    return "none" if value is None else value
