"""ezpool.options: every option is checked in one place, and a bad value is named."""

from __future__ import annotations

import multiprocessing
import re
from functools import partial

import pytest

from ezpool import Options, Pool
from tests import _helpers as h

BAD_VALUES = [
    # (option, value, error class)
    ("ncpu", 0, ValueError),
    ("ncpu", -1, ValueError),
    ("ncpu", 1.5, TypeError),
    ("ncpu", "2", TypeError),
    ("ncpu", True, TypeError),
    ("timeout", 0, ValueError),
    ("timeout", -1, ValueError),
    ("timeout", -0.5, ValueError),
    ("timeout", "x", TypeError),
    ("timeout", True, TypeError),
    ("chunksize", 0, ValueError),
    ("chunksize", -3, ValueError),
    ("chunksize", 2.5, TypeError),
    ("chunksize", "10", TypeError),
    ("start_method", "nope", ValueError),
    ("workers", [], ValueError),
    ("workers", 5, TypeError),
    ("workers", [5], TypeError),
    ("workers", ["PYRO:worker@localhost:21000", None], TypeError),
    ("progress", 5, TypeError),
    ("progress", "yes", TypeError),
    ("msg", 5, TypeError),
    ("msg", None, TypeError),
    ("spawn", "no", TypeError),
    ("max_attempts", 0, ValueError),
    ("max_attempts", None, TypeError),
    ("capture_output", "yes", TypeError),
    ("capture_output", 1, TypeError),
    ("capture_output", None, TypeError),
    ("backup", "no", TypeError),
    ("backup", 0, TypeError),
]

IDS = [f"{name}={value!r}" for name, value, _ in BAD_VALUES]


def _names(value: object) -> str:
    """A pattern that finds the value itself (or, for an element of a list, that element)."""
    if isinstance(value, list) and value:
        return "|".join(re.escape(repr(item)) for item in value if not isinstance(item, str))
    return re.escape(repr(value))


@pytest.mark.parametrize(("name", "value", "error"), BAD_VALUES, ids=IDS)
def test_a_bad_value_is_a_clear_error_naming_it(name, value, error):
    with pytest.raises(error, match=_names(value)) as info:
        Options(**{name: value})
    assert name in str(info.value) or name == "workers"


@pytest.mark.parametrize(("name", "value", "error"), BAD_VALUES, ids=IDS)
def test_a_bad_pool_default_is_refused_by_the_constructor(name, value, error):
    with pytest.raises(error, match=_names(value)):
        Pool(**{name: value})


@pytest.mark.parametrize(("name", "value", "error"), BAD_VALUES, ids=IDS)
def test_a_bad_value_given_to_a_call_is_refused_before_any_task_runs(name, value, error, tmp_path):
    record = partial(h.record_call, str(tmp_path))
    with Pool() as pool:
        with pytest.raises(error, match=_names(value)):
            pool.smap(record, [1, 2], **{name: value})
        with pytest.raises(error, match=_names(value)):
            pool.map(record, [1, 2], **{name: value})
    assert h.calls(tmp_path) == {}


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)],
)
def test_a_bad_ncpu_given_to_pmap_starts_no_process(value, error, tmp_path):
    with Pool() as pool:
        with pytest.raises(error, match=_names(value)):
            pool.pmap(partial(h.record_call, str(tmp_path)), [1, 2], value)
        assert not [p for p in multiprocessing.active_children() if p.name == "ezpool-worker"]
    assert h.calls(tmp_path) == {}


@pytest.mark.parametrize(
    ("wrong", "meant"),
    [("ncpus", "ncpu"), ("time_out", "timeout"), ("chunk_size", "chunksize"), ("worker", "workers")],
)
def test_an_unknown_option_is_a_type_error_that_suggests_the_right_one(wrong, meant):
    pattern = rf"unknown option '{wrong}'.*did you mean '{meant}'"
    with pytest.raises(TypeError, match=pattern):
        Options().replace(**{wrong: 1})
    with pytest.raises(TypeError, match=pattern):
        Pool(**{wrong: 1})
    with Pool() as pool, pytest.raises(TypeError, match=pattern):
        pool.smap(h.square, [1], **{wrong: 1})


def test_an_unknown_option_with_nothing_close_lists_the_options():
    with pytest.raises(TypeError, match=r"unknown option 'zzz'.*options: .*ncpu") as info:
        Options().replace(zzz=1)
    assert "did you mean" not in str(info.value)


def test_good_values_are_kept_and_workers_become_a_tuple():
    options = Options(
        ncpu=3, timeout=0.5, chunksize=7, start_method="spawn", workers="PYRO:w@localhost:1", progress=False
    )
    assert (options.ncpu, options.timeout, options.chunksize) == (3, 0.5, 7)
    assert options.workers == ("PYRO:w@localhost:1",)
    assert Options(workers=["PYRO:a@h:1", "PYRO:b@h:2"]).workers == ("PYRO:a@h:1", "PYRO:b@h:2")
    assert Options(progress=print).progress is print
    assert Options().replace(ncpu=2).replace(ncpu=None).ncpu is None


def test_capture_output_is_off_by_default_and_only_true_or_false():
    assert Options().capture_output is False
    assert Options(capture_output=True).capture_output is True
    assert Options().replace(capture_output=True).replace(capture_output=False).capture_output is False
    for value in (0, 1, "true", None, [True]):
        pattern = "capture_output must be True or False, got " + re.escape(repr(value))
        with pytest.raises(TypeError, match=pattern):
            Options(capture_output=value)


def test_replace_returns_a_new_options_and_leaves_the_old_one_alone():
    base = Options(msg="first")
    changed = base.replace(msg="second")
    assert (base.msg, changed.msg) == ("first", "second")
    assert base.replace() == base


def test_a_bad_hmac_key_names_its_type_but_never_its_value():
    with pytest.raises(TypeError, match="hmac_key must be a str, bytes or None, got int") as info:
        Options(hmac_key=987654)
    assert "987654" not in str(info.value)


def test_the_hmac_key_is_not_shown_in_the_repr():
    assert "s3cret" not in repr(Options(hmac_key="s3cret"))
    assert "<hidden>" in repr(Options(hmac_key=b"s3cret"))


def test_pool_defaults_are_used_and_a_call_may_override_them():
    seen: list[int] = []
    with Pool(progress=lambda outcome, done, total: seen.append(done)) as pool:
        pool.smap(h.square, [1, 2])
        assert seen == [1, 2]
        pool.smap(h.square, [1, 2], progress=False)
        assert seen == [1, 2]
