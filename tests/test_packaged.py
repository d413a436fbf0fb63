import pytest

from ptdist.backbones import resolve_model_path
from ptdist.errors import PtdistError
from ptdist.offline import resolve_packaged


def test_a_file_inside_an_installed_package_resolves():
    path = resolve_packaged("pkg:ptdist/tasks/builtin.yaml")
    assert path.is_file() and path.parts[-2:] == ("tasks", "builtin.yaml")
    assert resolve_model_path("pkg:ptdist/tasks") == str(path.parent)


def test_missing_package_or_path_says_what_to_do():
    with pytest.raises(PtdistError,
                       match=r"no installed package 'no_such_pkg'.*pip install no-such-pkg"):
        resolve_packaged("pkg:no_such_pkg/model")
    with pytest.raises(PtdistError, match="has no 'nothing/here'"):
        resolve_packaged("pkg:ptdist/nothing/here")
