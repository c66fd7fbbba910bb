"""The public surface of ``jobsched``: what ``__all__`` promises is what exists."""

from __future__ import annotations
import __future__

import importlib.metadata
import inspect
import types

import jobsched
import jobsched.testing


def _public_names(module: types.ModuleType) -> set[str]:
    """Names a user sees with ``dir()``, minus submodules and future flags."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
        and not isinstance(getattr(module, name), __future__._Feature)
    }


def test_all_equals_the_public_names() -> None:
    """Every public name is in ``__all__`` and every entry exists (STYLE 3)."""
    exported = set(jobsched.__all__) - {"__version__"}

    assert _public_names(jobsched) == exported


def test_all_has_no_duplicates_and_every_entry_resolves() -> None:
    assert len(jobsched.__all__) == len(set(jobsched.__all__))
    for name in jobsched.__all__:
        assert hasattr(jobsched, name), name


def test_public_objects_come_from_private_modules() -> None:
    """Re-exports point at ``jobsched._x`` implementation modules (STYLE 1)."""
    for name in jobsched.__all__:
        value = getattr(jobsched, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("jobsched._"), name


def test_exported_exceptions_share_one_root() -> None:
    errors = [
        getattr(jobsched, name)
        for name in jobsched.__all__
        if inspect.isclass(getattr(jobsched, name))
        and issubclass(getattr(jobsched, name), BaseException)
    ]

    assert len(errors) >= 8
    for error in errors:
        assert issubclass(error, jobsched.JobschedError), error.__name__


def test_version_is_the_installed_distribution_version() -> None:
    assert jobsched.__version__ == importlib.metadata.version("jobsched")


def test_testing_module_exports_its_helpers() -> None:
    assert {"FakeClock", "run_until_idle", "sqlite_memory_engine"} <= set(
        jobsched.testing.__all__
    )
    for name in jobsched.testing.__all__:
        assert callable(getattr(jobsched.testing, name)), name
