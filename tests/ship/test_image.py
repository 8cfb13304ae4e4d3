"""The container image (Dockerfile). No Docker engine here, so:
- the Dockerfile is checked statically (multi-stage, pinned base, build tools only in the builder,
  non-root numeric USER, `mobackup` ENTRYPOINT, the lock file it installs is current);
- its install steps are replayed in clean virtualenvs: the builder's `pip wheel` of the pinned
  dependencies and of the project, then the final stage's offline `pip install --no-index` from
  those wheels, `pip check`, and the entry point's `--help` (operator and agent included).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ship import tools

DOCKERFILE = tools.REPO / "Dockerfile"
LOCK = tools.DEPLOY / "requirements.lock"
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "cmake", "clang", "libc6-dev", "python3-dev")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_dockerfile_is_multi_stage_with_a_pinned_slim_base() -> None:
    args = {m.group(1): m.group(2) for w, a in _instructions() if w == "ARG"
            for m in [re.match(r"(\w+)=(\S+)", a)] if m}
    stages = _stages()
    assert len(stages) >= 2, "expected a builder stage and a final stage"
    for stage in stages:
        base = stage[0][1].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), base)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), f"base image not pinned: {base}"
    final = stages[-1]
    assert any("from=builder" in a for _, a in final), "final stage must take the wheels from the builder"


def test_final_stage_has_no_build_tools_and_runs_as_non_root() -> None:
    final = _stages()[-1]
    runs = " ".join(a for w, a in final if w == "RUN")
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", runs), f"{tool} in the final stage"
    assert "apt-get install" not in runs
    users = [a for w, a in final if w == "USER"]
    assert users, "final stage has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid (runAsNonRoot), got {users[-1]}"
    entry = [a for w, a in final if w == "ENTRYPOINT"]
    assert entry and entry[-1] == '["mobackup"]', entry
    # The builder is where compilers may live.
    assert "build-essential" in " ".join(a for w, a in _stages()[0] if w == "RUN")


def test_dockerfile_installs_exactly_the_lock_file() -> None:
    text = DOCKERFILE.read_text()
    assert "deploy/requirements.lock" in text and "--no-index" in text
    dockerignore = (tools.REPO / ".dockerignore").read_text().split()
    for needed in ("!pyproject.toml", "!README.md", "!operator/", "!deploy/requirements.lock"):
        assert needed in dockerignore


def test_lock_file_is_complete_and_satisfies_pyproject() -> None:
    """Every runtime dependency is pinned, each pin satisfies every requirement on it, and the
    tested venv (installed by tests/setup.sh with the lock as constraints) runs those pins."""
    proc = tools.run([tools.VENV_PY, tools.DEPLOY / "gen-requirements-lock", "--check"], check=False)
    assert proc.returncode == 0, proc.stderr


def test_lock_check_names_a_missing_pin_and_a_pin_that_breaks_a_requirement(tmp_path: Path) -> None:
    """The check is not a rubber stamp: a lock without boto3, or with a kubernetes pin outside
    pyproject's `<37`, is refused and the message names the package."""
    lock = (tools.DEPLOY / "requirements.lock").read_text()
    script = (tools.DEPLOY / "gen-requirements-lock").read_text()
    for edit, expected in (
        (lambda text: re.sub(r"(?m)^boto3==.*\n", "", text), "boto3 is a runtime dependency but not pinned"),
        (lambda text: re.sub(r"(?m)^kubernetes==.*$", "kubernetes==37.0.0", text), "kubernetes==37.0.0 breaks"),
    ):
        deploy = tmp_path / f"deploy-{expected.split()[0]}"
        deploy.mkdir()
        (deploy / "requirements.lock").write_text(edit(lock))
        (deploy / "gen-requirements-lock").write_text(script)
        proc = tools.run([tools.VENV_PY, deploy / "gen-requirements-lock", "--check"], check=False)
        assert proc.returncode == 1
        assert expected in proc.stderr


def build_context(dest: Path, repo: Path = tools.REPO) -> Path:
    """The files `docker build .` sends, per .dockerignore's allow-list (`*` then `!path` lines)."""
    allowed = [line[1:].rstrip("/") for line in (repo / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for rel in allowed:
        src = repo / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Dockerfile's two stages replayed: wheels built in one venv, installed offline in another."""
    if not (tools.REPO / "README.md").exists():
        pytest.fail("README.md is missing: pyproject.toml names it as the package readme, "
                    "so the image's wheel build (COPY README.md) would fail", pytrace=False)
    tmp = tmp_path_factory.mktemp("image")
    wheels, builder, final = tmp / "wheels", tmp / "builder", tmp / "final"
    context = build_context(tmp / "context")
    base_python = getattr(sys, "_base_executable", sys.executable)
    tools.run([base_python, "-m", "venv", builder])
    pip = [builder / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    # builder stage (the pip cache stands in for the registry; PyPI is reachable for misses)
    tools.run([*pip, "wheel", "--wheel-dir", wheels, "-r", LOCK], timeout=900)
    tools.run([*pip, "wheel", "--no-deps", "--wheel-dir", wheels, context], timeout=600)
    # final stage
    tools.run([base_python, "-m", "venv", final])
    project = sorted(wheels.glob("mo_backup_operator-*.whl"))
    assert project, "the project's wheel was not built"
    fpip = [final / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    tools.run([*fpip, "install", "--no-index", "--find-links", wheels, "-r", LOCK, project[-1]], timeout=600)
    tools.run([*fpip, "check"])
    return final


def test_clean_install_has_exactly_the_pinned_versions(image_venv: Path) -> None:
    frozen = tools.run([image_venv / "bin" / "python", "-m", "pip", "freeze", "--all"]).stdout
    installed = {line.lower().replace("_", "-") for line in frozen.splitlines()
                 if "==" in line and not line.lower().startswith(("mo-backup-operator", "mo_backup_operator",
                                                                  "pip==", "setuptools==", "wheel=="))}
    pinned = {line.lower() for line in LOCK.read_text().splitlines() if line and not line.startswith("#")}
    assert installed == pinned, f"extra: {installed - pinned}, missing: {pinned - installed}"


@pytest.mark.parametrize("argv", [["--help"], ["backup", "--help"], ["operator", "--help"], ["agent", "--help"]])
def test_entrypoint_help(image_venv: Path, argv: list[str]) -> None:
    entry = image_venv / "bin" / "mobackup"
    assert entry.exists(), "console script `mobackup` (the image's ENTRYPOINT) not installed"
    # Run from an unrelated directory, as the image does (WORKDIR /tmp), so that the source tree
    # cannot be imported by accident.
    proc = subprocess.run([str(entry), *argv], capture_output=True, text=True, timeout=120, cwd=image_venv)
    assert proc.returncode == 0, f"mobackup {' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}"
    assert "usage" in (proc.stdout + proc.stderr).lower()
