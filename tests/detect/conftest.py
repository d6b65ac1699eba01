"""Fixtures shared by the detect tests: one tiny saved model and one class-folder of images."""
import pytest

from tests.detect.common import tiny_model, write_class_folder


@pytest.fixture(scope="module")
def h5_model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "tiny.h5")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_class_folder(tmp_path_factory.mktemp("imgs"))
