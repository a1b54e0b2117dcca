"""Secrets stay out of the repository: the files that hold credentials are git-ignored.

``dvc remote modify --local`` writes a remote's credentials into ``.dvc/config.local``; a
``.env`` file holds ``AWS_*`` / ``MLFLOW_TRACKING_*`` variables; MLflow's basic-auth app keeps
its configuration and users in ``basic_auth.ini`` / ``basic_auth.db`` (README, "Sharing models
and results" and "MLflow"). ``git check-ignore`` must ignore each of them, so ``git add -A``
never stages one.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

SECRET_FILES = [
    ".dvc/config.local",
    ".env",
    ".env.local",
    "basic_auth.ini",
    "basic_auth.db",
    "server.pem",
    "server.key",
]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a checkout")
@pytest.mark.parametrize("path", SECRET_FILES)
def test_git_ignores_files_holding_credentials(path: str) -> None:
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"{path} is not git-ignored: {proc.stderr}"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a checkout")
def test_no_credentials_file_is_tracked() -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    bad = [p for p in tracked.split("\0") if p in SECRET_FILES or p.endswith((".pem", ".key"))]
    assert bad == []


def test_committed_dvc_config_holds_no_credentials() -> None:
    text = (REPO / ".dvc" / "config").read_text()
    for key in ("access_key_id", "secret_access_key", "session_token", "password", "credentialpath",
                "connection_string", "account_key", "sas_token"):
        assert key not in text, f".dvc/config sets {key}; use `dvc remote modify --local`"
