"""Sphinx configuration for pyramid_tenantmigrate's documentation.

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs
docs/_build/html`` (CI builds it with warnings as errors).
"""
import os
import sys

from docutils import nodes
from docutils.parsers.rst import Directive

sys.path.insert(0, os.path.abspath(".."))

project = "pyramid_tenantmigrate"
author = "pyramid_tenantmigrate contributors"
copyright = "2026, " + author
release = version = "0.1.dev0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "Alembic migrations for "
                      "schema-per-tenant PostgreSQL, as a Pyramid add-on"}
html_static_path = []


class SettingsTable(Directive):
    """``.. tenantmigrate-settings::``: the settings reference, made from
    the table in :mod:`pyramid_tenantmigrate.settings`."""

    def run(self):
        from pyramid_tenantmigrate.settings import PREFIX, SETTINGS

        items = nodes.definition_list()
        for name, _, default, meaning in SETTINGS:
            term = nodes.term()
            term += nodes.literal(text=PREFIX + name)
            if default not in (None, ()):
                term += nodes.Text(f"  (default: {default!r})")
            definition = nodes.definition()
            paragraph = nodes.paragraph()
            # The meanings use ``literal`` markup: parse it as RST inline.
            text_nodes, _ = self.state.inline_text(meaning, self.lineno)
            paragraph.extend(text_nodes)
            definition += paragraph
            item = nodes.definition_list_item()
            item += term
            item += definition
            items += item
        return [items]


def setup(app):
    app.add_directive("tenantmigrate-settings", SettingsTable)
