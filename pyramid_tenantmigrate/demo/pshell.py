"""The demo's ``[pshell]`` setup, as the Pyramid cookiecutter writes it:
``tenant-migrate development.ini shell tenant_acme``, then
``dbsession.add(models.Note(title="hi")); tm.commit()``."""
from . import models


def setup(env):
    request = env["request"]
    # request.dbsession joins request.tm, which pyramid_tm's explicit
    # manager leaves to us outside a request.
    request.tm.begin()
    env["tm"] = request.tm
    env["dbsession"] = request.dbsession  # the tenant's, in the shell
    env["models"] = models
