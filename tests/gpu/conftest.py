"""Device-test hooks. A device call that runs past its time limit is killed before pytest prints its
failure section, so each failure's traceback is written out the moment the test fails."""

from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        terminal = item.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line(f"\n---- {report.nodeid} failed in {report.when} ----")
            terminal.write_line(report.longreprtext)
