"""Environment errors at start are one line naming node.storage, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cxr_node.cli import main
from cxr_node.config import ConfigError
from cxr_node.startup import check_storage


def test_a_file_in_place_of_the_storage_directory(tmp_path):
    path = tmp_path / "storage"
    path.write_text("not a directory")
    with pytest.raises(ConfigError, match=rf"^node.storage: {path} is a file, not a directory$"):
        check_storage(path, 500)


def test_a_storage_directory_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "storage"
    with pytest.raises(ConfigError, match=rf"^node.storage: {path} cannot be created \(Not a directory\)$"):
        check_storage(path, 500)


def test_low_space_is_a_warning_and_the_directory_is_made(tmp_path):
    path = tmp_path / "new" / "storage"
    warning = check_storage(path, 500, free_space=lambda _: 120.0)
    assert path.is_dir() and not list(path.iterdir())  # the write probe is gone
    assert warning is not None and "120 MB free, less than receiver.min_free_mb (500)" in warning
    assert check_storage(path, 500, free_space=lambda _: 900.0) is None


def test_serve_with_storage_on_a_file_says_one_line(tmp_path):
    path = tmp_path / "storage"
    path.write_text("x")
    result = CliRunner().invoke(
        main, ["serve", "--storage", str(path), "--allow-untrained", "--no-web", "--port", "0"], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: node.storage: {path} is a file, not a directory"
