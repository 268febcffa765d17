"""The top-level names a user imports resolve to the real objects, lazily."""
import subprocess
import sys

import pytest

import clnfdiag


@pytest.mark.parametrize("name", [n for n in clnfdiag.__all__ if n != "__version__"])
def test_export_resolves_to_its_module_object(name):
    import importlib

    obj = getattr(clnfdiag, name)
    assert obj is getattr(importlib.import_module(clnfdiag._EXPORTS[name]), name)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        clnfdiag.no_such_thing  # noqa: B018


def test_import_stays_cheap():
    """``import clnfdiag`` loads neither numba nor matplotlib (the CLI depends on that)."""
    code = "import sys, clnfdiag; print('numba' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
