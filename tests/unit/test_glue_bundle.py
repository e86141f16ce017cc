"""The Glue job's bundle (its --extra-py-files): what it holds, that it is built the same every time, and
that it runs the job on Glue's Python 3.9 with nothing from the repository on the path."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import defusedxml
import pytest

from include.glue.price_glue import job, validation
from include.price_pipeline import glue_bundle, layout

PY39_CANDIDATES = (
    Path.home() / ".pyenv" / "versions" / "3.9.18" / "bin" / "python",
    shutil.which("python3.9"),
)
RECORD = {"date": 1500000000, "high": "0.0866", "low": 0.0862, "weightedAverage": 0.0864, "pair": "USDT_ETH"}
ARGV = [
    "--bucket=b",
    f"--ingestion_prefix={layout.INGESTION_PREFIX}",
    f"--analysis_prefix={layout.ANALYSIS_PREFIX}",
    f"--quarantine_prefix={layout.QUARANTINE_PREFIX}",
    "--window_start=2017-07-14T02:40:00Z",
    f"--field_aliases={layout.FIELD_ALIASES_PATH.read_text()}",
]
#: Run by Python 3.9 with only the bundle (and defusedxml) on its path: import the entry script as Glue
#: runs it, then plan one window from raw bytes; print where each module came from and the plan.
ON_PYTHON_39 = """
import json, runpy, sys
runpy.run_path(sys.argv[1], run_name="glue_entry")  # the script's imports, without running main
from include.glue.price_glue import job, validation
from include.price_pipeline import layout
args = job.parse_args(json.loads(sys.argv[2]))
pair = args.pairs[0]
key = layout.ingestion_key(args.start, ".json", pair=pair)
outcome = job.assess(sys.argv[3].encode(), args, key, args.start, pair)
outcome = dict(outcome, version=1, modified="2017-07-14T02:41:00Z")
plan = job.plan_pairs(args, args.start, [job.plan_window(args, args.start, [outcome], pair)])
modules = {name: module.__file__ for name, module in sys.modules.items() if name.startswith("include")}
from include.glue.price_glue.validation import to_csv
csv = [plan["pairs_csv"][0], to_csv(*plan["pairs_csv"][1]).decode()]
print(json.dumps({"version": sys.version_info[:2], "modules": modules, "csv": csv}))
"""


def entries(data: bytes) -> list[zipfile.ZipInfo]:
    return zipfile.ZipFile(io.BytesIO(data)).infolist()


def test_the_bundle_holds_the_package_and_layout_under_the_names_the_script_imports():
    package = sorted(f"include/glue/price_glue/{path.name}" for path in glue_bundle.PACKAGE_DIR.glob("*.py"))
    inits = ["include/__init__.py", "include/glue/__init__.py", "include/price_pipeline/__init__.py"]
    data = glue_bundle.bundle()
    archive = zipfile.ZipFile(io.BytesIO(data))

    assert sorted(archive.namelist()) == sorted([*package, *inits, "include/price_pipeline/layout.py"])
    assert "include/glue/price_glue/job.py" in package
    for name in archive.namelist():
        assert archive.read(name) == (glue_bundle.ROOT / name).read_bytes(), name


def test_the_bundle_is_the_same_bytes_on_every_build_in_name_order_at_one_fixed_time():
    data = glue_bundle.bundle()

    assert glue_bundle.bundle() == data
    names = [entry.filename for entry in entries(data)]
    assert names == sorted(names)
    assert {(entry.date_time, entry.external_attr >> 16, entry.compress_type) for entry in entries(data)} == {
        (glue_bundle.ENTRY_TIME, glue_bundle.ENTRY_MODE, zipfile.ZIP_STORED)
    }


def test_the_job_runs_from_the_bundle_alone_on_python_39_as_on_this_python(tmp_path):
    """Glue's Python shell runs 3.9: a 3.10+ construct anywhere in the bundle (``datetime.UTC``, a ``match``,
    ``zip(strict=)``) fails here, and the plan it makes is byte for byte the one made here."""
    python39 = next((str(path) for path in PY39_CANDIDATES if path and Path(path).exists()), None)
    if python39 is None:
        pytest.skip("no Python 3.9 here (~/.pyenv/versions/3.9.18/bin/python or python3.9 on PATH)")
    bundle = tmp_path / glue_bundle.BUNDLE_NAME
    bundle.write_bytes(glue_bundle.bundle())
    site = tmp_path / "site"  # Glue installs defusedxml (--additional-python-modules); a pure-Python copy
    shutil.copytree(Path(defusedxml.__file__).parent, site / "defusedxml")
    raw = json.dumps(RECORD)

    result = subprocess.run(
        [python39, "-c", ON_PYTHON_39, str(layout.GLUE_SCRIPT_PATH), json.dumps(ARGV), raw],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PYTHONPATH": f"{bundle}:{site}", "PATH": "/usr/bin:/bin"},
    )

    assert result.returncode == 0, result.stderr
    ran = json.loads(result.stdout)
    assert ran["version"] == [3, 9]
    assert ran["modules"]
    assert all(path.startswith(f"{bundle}/") for path in ran["modules"].values()), ran["modules"]
    assert "include.price_pipeline.layout" in ran["modules"]
    args = job.parse_args(ARGV)
    pair = args.pairs[0]
    outcome = job.assess(raw.encode(), args, layout.ingestion_key(args.start, ".json", pair=pair), args.start, pair)
    here = job.plan_window(args, args.start, [dict(outcome, version=1, modified="2017-07-14T02:41:00Z")], pair)
    key, rows = job.plan_pairs(args, args.start, [here])["pairs_csv"]
    assert ran["csv"] == [key, validation.to_csv(*rows).decode()]
    assert "0.0864" in ran["csv"][1]
