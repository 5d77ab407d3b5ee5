"""ezpool._core.logs: a module's logger, with ``logging`` imported only once something is logged."""

from __future__ import annotations

import copy
import logging
import pickle
import subprocess
import sys

import pytest

from ezpool._core.logs import get_logger

_FRESH = """
import sys
from ezpool._core.logs import get_logger

logger = get_logger("ezpool.fresh")
logger.debug("not %s", "wanted")
logger.info("not %s", "wanted either")
print("logging" in sys.modules)
logger.warning("a warning %s", "reaches stderr")
print("logging" in sys.modules)
"""


@pytest.mark.timeout(60)
def test_before_logging_is_imported_only_a_warning_imports_it(core_python, core_child_env):
    done = subprocess.run(
        [core_python, "-W", "error", "-c", _FRESH],
        env=core_child_env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
    # No handler is configured: the warning goes where logging's last resort sends it.
    assert done.stderr == "a warning reaches stderr\n"


def _record_here(logger: logging.Logger) -> int:
    logger.debug("from %s", "here")
    return sys._getframe().f_lineno - 1


@pytest.mark.timeout(10)
def test_records_name_the_caller_and_honour_levels(caplog):
    logger = get_logger("ezpool.tests.logs")
    assert logger.name == "ezpool.tests.logs"
    with caplog.at_level(logging.WARNING, logger="ezpool.tests.logs"):
        _record_here(logger)
    assert caplog.records == []
    with caplog.at_level(logging.DEBUG, logger="ezpool.tests.logs"):
        line = _record_here(logger)
    [record] = caplog.records
    assert (record.name, record.levelno) == ("ezpool.tests.logs", logging.DEBUG)
    assert record.getMessage() == "from here"
    assert (record.funcName, record.lineno, record.pathname) == ("_record_here", line, __file__)


@pytest.mark.timeout(10)
def test_it_stands_for_the_logger_of_its_name():
    logger = get_logger("ezpool.tests.same")
    assert logger.getEffectiveLevel() == logging.getLogger("ezpool.tests.same").getEffectiveLevel()
    logging.getLogger("ezpool.tests.same").setLevel(logging.ERROR)
    try:
        assert not logger.isEnabledFor(logging.WARNING)
    finally:
        logging.getLogger("ezpool.tests.same").setLevel(logging.NOTSET)
    assert "ezpool.tests.same" in repr(logger)


@pytest.mark.timeout(10)
def test_it_copies_and_pickles_as_the_logger_of_its_name():
    logger = get_logger("ezpool.tests.pickled")
    for again in (pickle.loads(pickle.dumps(logger)), copy.copy(logger), copy.deepcopy(logger)):
        assert again.name == "ezpool.tests.pickled"
        assert again.getEffectiveLevel() == logging.getLogger("ezpool.tests.pickled").getEffectiveLevel()
