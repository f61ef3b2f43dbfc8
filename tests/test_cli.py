import gc
import json

import pytest

from tagger.cli import main
from tests.conftest import DEMO_TAXONOMY


def test_cli_errors_are_one_clear_line(tmp_path, capsys, caplog):
    code = main(["ingest", str(tmp_path / "missing.csv"), "--taxonomy", DEMO_TAXONOMY,
                 "--lake", str(tmp_path / "lake")])
    assert code == 2
    assert "missing.csv does not exist" in caplog.text and "Traceback" not in caplog.text
    code = main(["tag", "--lake", str(tmp_path / "lake")])
    assert code == 2 and "Train one first: tagger train --lake" in caplog.text


def test_cli_rejects_unknown_backbone(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--lake", "x", "--backbone", "effnet"])
    assert "invalid choice: 'effnet'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_ingest_train_tag(catalog, tmp_path, capsys):
    lake = str(tmp_path / "lake")
    assert main(["ingest", str(catalog), "--taxonomy", DEMO_TAXONOMY, "--lake", lake]) == 0
    ingested = json.loads(capsys.readouterr().out)
    assert (ingested["products"], ingested["rejected"], ingested["shards_written"]) == (60, 3, 1)
    assert main(["train", "--lake", lake, "--backbone", "test_efficientnet", "--image-size", "48",
                 "--epochs", "1", "--no-pretrained", "--workers", "0"]) == 0
    version = capsys.readouterr().out.strip()
    assert (tmp_path / "lake" / "models" / version / "card.json").exists()
    gc.unfreeze()
    assert main(["tag", "--lake", lake, "--run-date", "2026-02-03"]) == 0
    assert gc.get_freeze_count() > 0  # the tag command froze what it had imported
    gc.unfreeze()  # this is pytest's process
    tagged = json.loads(capsys.readouterr().out)
    assert tagged["model_version"] == version and tagged["tagged"] == 60
    assert (tmp_path / "lake" / "tags/history/run_date=2026-02-03").is_dir()
    assert main(["tag", "--lake", lake]) == 0
    assert json.loads(capsys.readouterr().out)["tagged"] == 0


def test_sigterm_unwinds_so_locks_are_released():
    """A scheduler's SIGTERM ends the CLI through SystemExit: `finally` blocks (lock release) run."""
    import subprocess
    import sys

    code = (
        "import os, signal, time\n"
        "from tagger.cli import install_signal_handlers\n"
        "install_signal_handlers()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(10)\n"
        "finally:\n"
        "    print('released')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143 and proc.stdout.strip() == "released"


def test_help_imports_no_torch():
    """`tagger --help` (and a command's) builds every parser from the config models alone:
    torch and timm are imported by the commands that run a model, not by the parser."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tagger.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['tag', '--help'], ['ingest', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, argv\n"
        "print(sorted(m for m in ('torch', 'timm', 'onnxruntime', 'prefect') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--weight-decay" in proc.stdout  # the generated flags were printed
    assert proc.stdout.strip().splitlines()[-1] == "[]"
