"""The package's front: `from tagger import ...` gives each stage's entry point, lazily."""

import subprocess
import sys

import pytest

import tagger


@pytest.mark.parametrize("name", tagger.__all__)
def test_every_entry_point_is_the_rooms_own_function(name):
    value = getattr(tagger, name)
    module = tagger._ENTRY_POINTS[name]
    assert value is getattr(sys.modules[module], name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'tag_products'"):
        tagger.tag_products  # noqa: B018


def test_importing_the_package_imports_no_torch():
    code = ("import sys, tagger; from tagger import load_config, open_storage; "
            "print(sorted(m for m in ('torch', 'timm', 'prefect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
