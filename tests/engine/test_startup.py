"""`mobackup --help` and `mobackup list` stay quick to start: the terminal and operator libraries
(rich, prometheus-client, cronsim, kopf, kubernetes), and the codecs a plain repository does not use
(cryptography, zstandard), are imported only where they are used."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("rich", "pygments", "prometheus_client", "cronsim", "kopf", "kubernetes", "cryptography", "zstandard")


def test_help_imports_no_terminal_or_operator_library() -> None:
    code = ("import sys, contextlib, io\n"
            "from mobackup import cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    cli.main(['--help'])\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_demo_does_not_import_the_cli() -> None:
    """No import circle: cli imports demo lazily, demo never imports cli (the table lives in table.py)."""
    import ast
    from pathlib import Path

    import mobackup.demo

    tree = ast.parse(Path(mobackup.demo.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "cli" not in imported and "mobackup.cli" not in imported


def test_cli_modules_import_one_way() -> None:
    """The CLI package has no import circle (no module imports one that imports it back), and the Job
    agent takes its checks from the engine, never from the CLI."""
    import ast
    from pathlib import Path

    import mobackup.cli
    import mobackup.k8s.agent

    package = Path(mobackup.cli.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names |= {node.module} if node.module else {a.name for a in node.names}
        imports[path.stem] = names

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in imports.get(start, ()))

    assert {"__init__", "parser", "commands", "common", "s3"} <= set(imports)
    assert not [m for m in imports if reaches(m, m, set())], imports
    agent = ast.parse(Path(mobackup.k8s.agent.__file__).read_text())
    modules = {node.module for node in ast.walk(agent) if isinstance(node, ast.ImportFrom)}
    assert not [m for m in modules if m and (m == "mobackup.cli" or m.startswith(("mobackup.cli.", "mobackup.cli_")))]


def test_small_incremental_imports_only_what_it_uses(tmp_path) -> None:
    """A small incremental backup is measured against rsync, start-up included (issue 22): it holds a
    small base list and checks its own list in memory (no sqlite3), runs its readers on plain threads
    (no concurrent.futures, which imports logging), and imports neither socket nor pymysql."""
    data = tmp_path / "data"
    (data / "shared").mkdir(parents=True)
    for n in range(3):
        (data / "shared" / f"object-{n}").write_bytes(bytes([n]) * 70_000)
    repo = tmp_path / "repo"
    code = ("import sys, contextlib, io\n"
            "from mobackup import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert cli.main(sys.argv[1:]) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('sqlite3', '_sqlite3', 'concurrent', 'logging', 'socket', 'pymysql')))\n")
    backup = ["backup", "--data-dir", str(data), "--repo", str(repo), "--json"]
    subprocess.run([sys.executable, "-c", code, *backup, "--type", "full"], capture_output=True, text=True, check=True)
    (data / "shared" / "object-3").write_bytes(b"new" * 1000)
    done = subprocess.run([sys.executable, "-c", code, *backup, "--type", "incremental"], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_s3_clients_skip_botocores_walk_of_every_service() -> None:
    """An S3 client's data loader answers "is this a service?" from the data directories' names
    (engine/s3.py, issue 22: 0.24 s of 0.6 s per first client): every service botocore knows is still
    known, and S3's model loads from it."""
    from botocore.loaders import create_loader

    from mobackup.engine import s3

    quick = s3._quick_loader(None)
    assert set(create_loader().list_available_services("service-2")) <= set(quick.list_available_services("service-2"))
    assert quick.load_service_model("s3", "service-2")["metadata"]["endpointPrefix"] == "s3"
    session = s3._new_session("key", "secret")
    assert session.get_component("data_loader") is s3._LOADER
    assert session.create_client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1").meta.service_model
    assert session.get_credentials().get_frozen_credentials()[:2] == ("key", "secret")


def test_the_s3_backend_imports_botocore_alone() -> None:
    """An S3 backend, its multipart uploads included (write_parts), needs neither boto3 nor
    s3transfer (issue 22: about 60 modules of an S3 ingest shard's start)."""
    code = ("import sys\n"
            "from mobackup.engine.online_s3 import S3Place\n"
            "from mobackup.engine import s3_restore\n"
            "backend = S3Place('b', 'p', 'http://127.0.0.1:9', 'us-east-1', True, None, 'k', 's').backend()\n"
            "assert backend.client.meta.service_model.service_name == 's3'\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 's3transfer')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sql_session_leaves_cryptography_out_of_pymysql() -> None:
    """pymysql imports cryptography (~60 ms) only for the RSA password exchange without TLS, which the
    guarded connection refuses (engine/sqlconn.py): an online backup's SQL session starts without it,
    pymysql knows it has none (so that path fails closed), and the repository's encryption still
    imports it afterwards."""
    code = ("import sys\n"
            "import mobackup.engine.mosql as mosql\n"
            "print('cryptography' in sys.modules, mosql.pymysql._auth._have_cryptography)\n"
            "from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n"
            "print(len(AESGCM(AESGCM.generate_key(bit_length=256)).encrypt(b'0' * 12, b'data', None)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "20"]
