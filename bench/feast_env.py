"""The peer's own virtual environment: Feast 0.67 with its PostgreSQL and Redis extras, in bench/.feast-venv.

Feast never goes into the project's environment (its pins on pandas, pyarrow, redis and SQLAlchemy are
not ours to carry). The benchmarks run Feast as a subprocess with this venv's interpreter; the code it
runs there is bench/feast_worker.py, which imports Feast and nothing of featurepipe.

    python bench/feast_env.py            # create it if missing (a few minutes the first time), print its python
    python bench/feast_env.py --recreate # throw it away and build it again
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

FEAST_VERSION = "0.67.0"
# The extras are called `postgres` (psycopg[binary,pool]) and `redis` (redis-py < 8 and hiredis) in 0.67.
REQUIREMENT = f"feast[postgres,redis]=={FEAST_VERSION}"
VENV_DIR = Path(__file__).resolve().with_name(".feast-venv")
WORKER = Path(__file__).resolve().with_name("feast_worker.py")
_MARKER = "featurepipe-bench.json"  # written last: a venv without it is half-built and is rebuilt


def venv_python(venv_dir: Path = VENV_DIR) -> Path:
    return venv_dir / "bin" / "python"


def ensure_feast_venv(venv_dir: Path = VENV_DIR, *, recreate: bool = False, quiet: bool = False) -> Path:
    """The interpreter of a venv holding `REQUIREMENT`, creating the venv first when missing or stale."""
    python = venv_python(venv_dir)
    marker = venv_dir / _MARKER
    if not recreate and python.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()).get("requirement") == REQUIREMENT:
                return python
        except ValueError:
            pass
    if venv_dir.exists():
        shutil.rmtree(venv_dir)
    _log(quiet, f"creating {venv_dir} with {REQUIREMENT} (takes a few minutes)")
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"] + (["-q"] if quiet else [])
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", REQUIREMENT], check=True)
    versions = feast_versions(python)
    if versions.get("feast") != FEAST_VERSION:
        raise SystemExit(f"{venv_dir}: expected feast {FEAST_VERSION}, found {versions.get('feast')}")
    marker.write_text(json.dumps({"requirement": REQUIREMENT, "versions": versions}, indent=2) + "\n")
    _log(quiet, f"{venv_dir}: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return python


def feast_versions(python: Path | None = None) -> dict[str, str]:
    """Versions of Feast and of the client libraries it talks to PostgreSQL and Redis with."""
    script = (
        "import json, importlib.metadata as m\n"
        "names = ['feast', 'psycopg', 'redis', 'hiredis', 'pandas', 'pyarrow']\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python or venv_python()), "-c", script], check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout))


def run_worker(args: list[str], *, timeout_s: float = 3600) -> dict[str, object]:
    """Run bench/feast_worker.py in the Feast venv; it prints one JSON object on its last stdout line."""
    python = ensure_feast_venv()
    done = subprocess.run(
        [str(python), str(WORKER), *args], capture_output=True, text=True, timeout=timeout_s, cwd=WORKER.parent
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"feast worker {' '.join(args[:1])} exited with {done.returncode}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
        raise SystemExit("feast worker printed no result")
    return dict(json.loads(lines[-1]))


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recreate", action="store_true", help="Delete and rebuild the venv.")
    args = parser.parse_args(argv)
    python = ensure_feast_venv(recreate=args.recreate)
    print(python)
    print(json.dumps(feast_versions(python)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
