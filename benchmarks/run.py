#!/usr/bin/env python3
"""mobackup against cp -r, rsync, rclone and restic, on one seeded data set, in one run.

Usage (see benchmarks/README.md; benchmarks/run.sh installs the tools first):
    python benchmarks/run.py [--size small|full] [--reps 3] [--sections local,s3,memory]

Writes benchmarks/results/<UTC time>-<size>.json and prints the markdown tables (benchmarks/report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataset
import measure
import memscale
import report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_WORK = HERE / "work"
BUCKET = "bench"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work.absolute()
        self.out = self.work / "out"
        self.logs = self.work / "logs"
        self.cold = not args.warm and measure.drop_caches()
        self.samples: list[dict[str, Any]] = []
        self.mobackup = args.mobackup
        self.rclone = args.rclone
        foreign = ("MOBACKUP_", "AWS_", "RESTIC_", "RCLONE_")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
        # restic's repository password: from the environment, as restic reads it; random by default.
        self.env["RESTIC_PASSWORD"] = os.environ.get("RESTIC_PASSWORD") or secrets.token_urlsafe(18)
        self.env["RCLONE_CONFIG"] = str(self.work / "rclone.conf")  # no user configuration
        self.restic_cache = self.work / "restic-cache"
        self.ds: dataset.DataSet | None = None
        self.s3_env: dict[str, str] = {}

    # ----- helpers -------------------------------------------------------------------------------

    def fresh(self, name: str) -> Path:
        path = self.out / name
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def measure(self, section: str, tool: str, op: str, rep: int, cmd: list[str], *,
                env: dict[str, str] | None = None, nbytes: int, **params: Any) -> dict[str, Any]:
        if self.args.profile and tool == "mobackup":
            # Sampled (py-spy, 250 Hz, idle threads included) into collapsed stacks for profsummary.py.
            out = self.args.results / "profiles" / f"{section}-{op}-p{params.get('parallelism', 4)}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [str(Path(self.rclone).with_name("py-spy")), "record", "--idle", "--threads", "--nonblocking",
                   "--rate", "250", "--format", "raw", "--output", str(out), "--", *cmd]
        result = measure.run(cmd, env=env or self.env, cold=self.cold, log=self.logs / f"{section}.log")
        sample = {"section": section, "tool": tool, "op": op, "rep": rep, "bytes": nbytes, **params, **result}
        self.samples.append(sample)
        print(f"  [{section}] {tool:<18} {op:<12} rep {rep} {params or ''}: {result['durable_s']:7.2f} s "
              f"(wall {result['wall_s']:.2f}), {result['peak_rss_mb']:.0f} MB RSS, load {result['load1']}", flush=True)
        return sample

    def quiet(self, cmd: list[str], env: dict[str, str] | None = None) -> str:
        done = subprocess.run(cmd, env=env or self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise measure.CommandFailed(f"{' '.join(cmd)}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def check_tree(self, path: Path, state: dict[str, int], what: str) -> None:
        """A restore or copy must hold the state's files and bytes (cheap sanity check)."""
        files = size = 0
        for directory, _, names in os.walk(path):
            for name in names:
                files += 1
                size += os.lstat(os.path.join(directory, name)).st_size
        if (files, size) != (state["files"], state["bytes"]):
            raise RuntimeError(f"{what}: {files} files / {size} bytes, expected {state['files']} / {state['bytes']}")

    def engines(self) -> list[tuple[str, str]]:
        """The mobackup builds compared: the project's, and an optional scratch variant (--variant)."""
        return [("mobackup", self.mobackup)] + ([("mobackup-variant", self.args.variant)] if self.args.variant else [])

    def mobackup_ids(self, repo: str, env: dict[str, str]) -> dict[str, str]:
        listing = json.loads(self.quiet([self.mobackup, "list", "--repo", repo, "--json"], env))
        return {s["type"]: s["id"] for s in listing}

    # ----- local directory -----------------------------------------------------------------------

    def local(self, rep: int) -> None:
        ds = self.ds
        assert ds is not None
        a, b = ds.state_a["bytes"], ds.state_b["bytes"]
        src = str(ds.src)
        ds.use("a")

        tools = self.args.local_tools
        dst = self.fresh("cp")
        self.measure("local", "cp -r", "full", rep, ["cp", "-r", src, str(dst)], nbytes=a)
        self.check_tree(dst, ds.state_a, "cp -r")
        shutil.rmtree(dst)

        dst = self.fresh("rsync")
        self.measure("local", "rsync -a", "full", rep, ["rsync", "-a", src + "/", str(dst) + "/"], nbytes=a)
        ds.use("b")
        self.measure("local", "rsync -a", "incremental", rep,
                     ["rsync", "-a", "--delete", src + "/", str(dst) + "/"], nbytes=b)
        self.check_tree(dst, ds.state_b, "rsync incremental")
        ds.use("a")
        shutil.rmtree(dst)

        if "rclone" in tools:
            dst = self.fresh("rclone")
            self.measure("local", "rclone sync", "full", rep, [self.rclone, "sync", "-q", src, str(dst)], nbytes=a)
            ds.use("b")
            self.measure("local", "rclone sync", "incremental", rep, [self.rclone, "sync", "-q", src, str(dst)],
                         nbytes=b)
            ds.use("a")
            shutil.rmtree(dst)

        for tool, binary in self.engines():
            for parallelism in self.args.local_parallelism:
                repo = self.fresh("mobackup-repo")
                flags = [] if parallelism is None else ["--parallelism", str(parallelism)]
                tag = {"parallelism": parallelism or 4}
                self.measure("local", tool, "full", rep,
                             [binary, "backup", "--data-dir", src, "--repo", str(repo), "--type", "full",
                              "--json", *flags], nbytes=a, **tag)
                target = self.fresh("mobackup-restore")
                ids = self.mobackup_ids(str(repo), self.env)
                self.measure("local", tool, "restore", rep,
                             [binary, "restore", ids["full"], "--repo", str(repo), "--target", str(target),
                              "--json", *flags], nbytes=a, **tag)
                self.check_tree(target, ds.state_a, "mobackup restore")
                shutil.rmtree(target)
                if parallelism == self.args.local_parallelism[0]:
                    ds.use("b")
                    self.measure("local", tool, "incremental", rep,
                                 [binary, "backup", "--data-dir", src, "--repo", str(repo), "--type",
                                  "incremental", "--json", *flags], nbytes=b, **tag)
                    ds.use("a")
                shutil.rmtree(repo)

        if "restic" in tools:
            repo = self.fresh("restic-repo")
            env = self.env | {"RESTIC_REPOSITORY": str(repo)}
            self.restic(env, rep, "local", a, b)
            shutil.rmtree(repo)

    def restic(self, env: dict[str, str], rep: int, section: str, a: int, b: int) -> None:
        ds = self.ds
        assert ds is not None
        if self.restic_cache.exists():
            shutil.rmtree(self.restic_cache)
        common = ["restic", "--cache-dir", str(self.restic_cache), *self.restic_options(section)]
        self.quiet([*common, "init"], env)
        self.measure(section, "restic", "full", rep, [*common, "backup", "-q", "--host", "bench", str(ds.src)],
                     env=env, nbytes=a)
        snapshot = json.loads(self.quiet([*common, "snapshots", "--json"], env))[0]["id"]
        target = self.fresh("restic-restore")
        self.measure(section, "restic", "restore", rep,
                     [*common, "restore", "-q", snapshot, "--target", str(target)], env=env, nbytes=a)
        self.check_tree(target, ds.state_a, "restic restore")
        shutil.rmtree(target)
        ds.use("b")
        self.measure(section, "restic", "incremental", rep, [*common, "backup", "-q", "--host", "bench", str(ds.src)],
                     env=env, nbytes=b)
        ds.use("a")

    def restic_options(self, section: str) -> list[str]:
        return ["-o", "s3.bucket-lookup=path"] if section == "s3" else []

    # ----- S3 (SeaweedFS on loopback, the test suite's S3 server) ------------------------------

    def start_s3(self) -> Any:
        sys.path.insert(0, str(ROOT / "tests"))
        from cluster.s3 import start_s3

        data = self.work / "s3-server"
        if data.exists():
            shutil.rmtree(data)
        server = start_s3(data, bucket=BUCKET)
        self.s3_env = server.env() | {
            "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_S3_ENDPOINT": server.endpoint, "RCLONE_CONFIG_S3_ACCESS_KEY_ID": server.access_key,
            "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": server.secret_key, "RCLONE_CONFIG_S3_REGION": server.region,
        }
        return server

    def purge(self, prefix: str) -> None:
        self.quiet([self.rclone, "purge", f"s3:{BUCKET}/{prefix}"], self.env | self.s3_env)

    def s3(self, rep: int) -> None:
        ds = self.ds
        assert ds is not None
        a, b = ds.state_a["bytes"], ds.state_b["bytes"]
        src = str(ds.src)
        env = self.env | self.s3_env
        ds.use("a")

        for tool, binary in self.engines():
            for parallelism in self.args.s3_parallelism:
                prefix = f"{tool}-{rep}-{parallelism}"
                repo = f"s3://{BUCKET}/{prefix}"
                flags = ["--parallelism", str(parallelism)]
                tag = {"parallelism": parallelism}
                self.measure("s3", tool, "full", rep,
                             [binary, "backup", "--data-dir", src, "--repo", repo, "--type", "full", "--json",
                              *flags], env=env, nbytes=a, **tag)
                ids = self.mobackup_ids(repo, env)
                target = self.fresh("mobackup-restore")
                self.measure("s3", tool, "restore", rep,
                             [binary, "restore", ids["full"], "--repo", repo, "--target", str(target), "--json",
                              *flags], env=env, nbytes=a, **tag)
                self.check_tree(target, ds.state_a, "mobackup restore from S3")
                shutil.rmtree(target)
                ds.use("b")
                self.measure("s3", tool, "incremental", rep,
                             [binary, "backup", "--data-dir", src, "--repo", repo, "--type", "incremental",
                              "--json", *flags], env=env, nbytes=b, **tag)
                ds.use("a")
                self.purge(prefix)

        if self.args.s3_zstd:
            # The same with compression: about half of the data set compresses, so less goes over the wire.
            prefix = f"mobackup-zstd-{rep}"
            repo = f"s3://{BUCKET}/{prefix}"
            tag = {"parallelism": 4}
            zstd = [self.mobackup, "backup", "--data-dir", src, "--repo", repo, "--compression", "zstd", "--json"]
            self.measure("s3", "mobackup zstd", "full", rep, [*zstd, "--type", "full"], env=env, nbytes=a, **tag)
            ids = self.mobackup_ids(repo, env)
            target = self.fresh("mobackup-restore")
            self.measure("s3", "mobackup zstd", "restore", rep,
                         [self.mobackup, "restore", ids["full"], "--repo", repo, "--target", str(target), "--json"],
                         env=env, nbytes=a, **tag)
            self.check_tree(target, ds.state_a, "mobackup zstd restore from S3")
            shutil.rmtree(target)
            ds.use("b")
            self.measure("s3", "mobackup zstd", "incremental", rep, [*zstd, "--type", "incremental"], env=env,
                         nbytes=b, **tag)
            ds.use("a")
            self.purge(prefix)

        prefix = f"rclone-{rep}"
        self.measure("s3", "rclone sync", "full", rep, [self.rclone, "sync", "-q", src, f"s3:{BUCKET}/{prefix}"],
                     env=env, nbytes=a)
        target = self.fresh("rclone-restore")
        self.measure("s3", "rclone sync", "restore", rep,
                     [self.rclone, "sync", "-q", f"s3:{BUCKET}/{prefix}", str(target)], env=env, nbytes=a)
        # rclone keeps no empty directories on S3: count files and bytes only
        shutil.rmtree(target)
        ds.use("b")
        self.measure("s3", "rclone sync", "incremental", rep,
                     [self.rclone, "sync", "-q", src, f"s3:{BUCKET}/{prefix}"], env=env, nbytes=b)
        ds.use("a")
        self.purge(prefix)

        prefix = f"restic-{rep}"
        restic_env = env | {"RESTIC_REPOSITORY": f"s3:{self.s3_env['AWS_ENDPOINT_URL']}/{BUCKET}/{prefix}"}
        self.restic(restic_env, rep, "s3", a, b)
        self.purge(prefix)

    # ----- the run -------------------------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        weed = measure.output_of([str(Path(self.args.weed)), "version"])
        return {
            "mobackup": measure.output_of([self.mobackup, "--version"]),
            "cp": measure.output_of(["cp", "--version"]),
            "rsync": measure.output_of(["rsync", "--version"]),
            "rclone": measure.output_of([self.rclone, "version"]),
            "restic": measure.output_of(["restic", "version"]),
            "seaweedfs": weed,
            "python": sys.version.split()[0],
            # The engine measured: the commit, and whether operator/ had uncommitted changes then.
            "mobackup_commit": measure.output_of(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
            "mobackup_tree_dirty": str(bool(measure.output_of(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--", "operator"]))),
        }

    def machine(self) -> dict[str, Any]:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "?")
        device = measure.output_of(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", str(self.work)])
        rota = measure.output_of(["lsblk", "-d", "-n", "-o", "NAME,ROTA,MODEL", device.split()[0]]) if device else ""
        return {
            "cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
            "filesystem": device, "block_device": rota,
        }

    def main(self) -> Path:
        sections = self.args.sections
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        results: dict[str, Any] = {
            "started_at": started, "size": self.args.size, "seed": self.args.seed, "reps": self.args.reps,
            "cache": "cold (sync; echo 3 > /proc/sys/vm/drop_caches before every command)" if self.cold
            else "warm (page cache not dropped)",
            "machine": self.machine(), "versions": self.versions(), "command": " ".join(sys.argv),
        }
        print(f"benchmark {started}: size {self.args.size}, {self.args.reps} reps, cache {results['cache']}")
        for _, command in self.engines():
            measure.precompile(command, self.env)
        if {"local", "s3"} & set(sections):
            clock = time.monotonic()
            self.ds = dataset.build(self.work / f"data-{self.args.size}", self.args.size, self.args.seed)
            results["dataset"] = self.ds.to_dict() | {"build_s": round(time.monotonic() - clock, 1)}
            print(f"data set: {self.ds.state_a} -> {self.ds.state_b} ({results['dataset']['build_s']} s)")
        server = self.start_s3() if "s3" in sections else None
        try:
            # Repetitions interleave the tools, so that load from other processes spreads evenly.
            for rep in range(self.args.reps):
                for section, step in (("local", self.local), ("s3", self.s3)):
                    if section in sections:
                        print(f"rep {rep} {section}", flush=True)
                        step(rep)
                        self.save(results)
        finally:
            if server is not None:
                server.stop()
        if "memory" in sections:
            def progress(rows: list[dict[str, Any]]) -> None:
                results["memory"] = rows
                self.save(results)

            results["memory"] = memscale.run(self.work / "memory", self.mobackup, self.args.memory_counts,
                                             self.env, self.logs / "memory.log", on_result=progress)
        if "online-memory" in sections:
            def online_progress(rows: list[dict[str, Any]]) -> None:
                results["online_memory"] = rows
                self.save(results)

            results["online_memory"] = memscale.run_online(self.work / "online-memory", self.args.memory_counts,
                                                           self.env, self.logs / "memory.log", sys.executable,
                                                           on_result=online_progress)
        results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path = self.save(results)
        print(report.render(results))
        if not self.args.keep:
            shutil.rmtree(self.work / "out", ignore_errors=True)
            shutil.rmtree(self.work / "s3-server", ignore_errors=True)
            shutil.rmtree(self.restic_cache, ignore_errors=True)
            if self.ds is not None:
                shutil.rmtree(self.ds.root, ignore_errors=True)
        return path

    def save(self, results: dict[str, Any]) -> Path:
        results["samples"] = self.samples
        results["summary"] = report.summarise(self.samples)
        out = self.args.results / f"{results['started_at'].replace(':', '')}-{self.args.size}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cache = Path.home() / ".cache" / "mobackup-test" / "bin"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(dataset.PROFILES), default="full",
                        help="full: ~2 GiB, 800 objects of 1-16 MiB; small: ~200 MiB (default full)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported (default 3)")
    parser.add_argument("--seed", type=int, default=20240515)
    parser.add_argument("--sections", type=lambda s: s.split(","), default=["local", "s3", "memory"],
                        help="comma-separated: local,s3,memory,online-memory (default local,s3,memory)")
    parser.add_argument("--local-parallelism", type=_ints, default=[4, 2, 8],
                        help="mobackup --parallelism values on the local directory; the first is also used for "
                        "the incremental (default 4,2,8)")
    parser.add_argument("--local-tools", type=lambda s: s.split(","), default=["rclone", "restic"],
                        help="the local section's other tools besides cp -r, rsync and mobackup (default "
                             "rclone,restic; '' for none: a quicker side-by-side run)")
    parser.add_argument("--s3-parallelism", type=_ints, default=[4, 2, 8, 16],
                        help="mobackup --parallelism values against S3 (default 4,2,8,16)")
    parser.add_argument("--s3-zstd", action="store_true",
                        help="also run mobackup --compression zstd against S3 (--parallelism 4)")
    parser.add_argument("--memory-counts", type=_ints, default=[1_000, 10_000, 100_000, 1_000_000],
                        help="files in the manifest for the memory test (default 1000,10000,100000,1000000)")
    parser.add_argument("--warm", action="store_true", help="do not drop the page cache before each command")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch directory (git-ignored)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--profile", action="store_true",
                        help="run every mobackup command under py-spy; collapsed stacks in RESULTS/profiles/")
    parser.add_argument("--keep", action="store_true", help="keep the data set and outputs in --work")
    parser.add_argument("--mobackup", default=str(ROOT / ".venv" / "bin" / "mobackup"))
    parser.add_argument("--variant", help="a second mobackup command (e.g. a scratch build) measured beside "
                        "the first, as tool `mobackup-variant`")
    parser.add_argument("--rclone", default=str(DEFAULT_WORK / "venv" / "bin" / "rclone"))
    parser.add_argument("--weed", default=str(cache / "weed"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in (args.mobackup, args.rclone, "cp", "rsync", "restic"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: run benchmarks/run.sh, which installs the tools")
    path = Bench(args).main()
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
