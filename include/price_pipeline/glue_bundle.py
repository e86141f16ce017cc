"""The Glue job's bundle: the one zip its ``--extra-py-files`` names, holding ``include.glue.price_glue`` and
``include.price_pipeline.layout`` under the names the job script imports them by. Built here only: ``make
glue-bundle`` writes :data:`BUNDLE_PATH` for Terraform to upload to :data:`KEY`, the stand-in uploads
:func:`bundle` at its start. Deterministic (name order, one fixed time and mode, stored uncompressed: no zlib
version in the bytes), so a re-upload changes nothing.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from include.price_pipeline import layout

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "include" / "glue" / "price_glue"
BUNDLE_NAME = "price_glue.zip"
#: Where the job's ``--extra-py-files`` finds it, beside the job script.
KEY = layout.GLUE_SCRIPTS_PREFIX + BUNDLE_NAME
#: Where ``make glue-bundle`` writes it (Terraform's upload source).
BUNDLE_PATH = ROOT / "build" / BUNDLE_NAME
#: Every entry's time (the earliest a zip can hold) and Unix mode.
ENTRY_TIME = (1980, 1, 1, 0, 0, 0)
ENTRY_MODE = 0o644


def files() -> list[Path]:
    """The bundle's files, in entry name order."""
    packages = [ROOT / "include", ROOT / "include" / "glue", ROOT / "include" / "price_pipeline"]
    paths = [*PACKAGE_DIR.glob("*.py"), Path(layout.__file__), *(package / "__init__.py" for package in packages)]
    return sorted(paths, key=entry_name)


def entry_name(path: Path) -> str:
    """A file's name in the bundle: its path in the repository, as the job imports it."""
    return path.resolve().relative_to(ROOT).as_posix()


def bundle() -> bytes:
    """The bundle's bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for path in files():
            entry = zipfile.ZipInfo(entry_name(path), ENTRY_TIME)
            entry.create_system = 3  # Unix, on any machine
            entry.external_attr = ENTRY_MODE << 16
            archive.writestr(entry, path.read_bytes())
    return out.getvalue()


def main() -> int:
    """``make glue-bundle``: write the bundle to BUNDLE_PATH."""
    BUNDLE_PATH.parent.mkdir(exist_ok=True)
    BUNDLE_PATH.write_bytes(bundle())
    print(f"{BUNDLE_PATH.relative_to(ROOT)}: {len(files())} files, {BUNDLE_PATH.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
