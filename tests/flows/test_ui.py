"""Retraining from the Prefect web UI, in a real browser: a `prefect server start` with its
UI on loopback, `prefect deploy --all`, then headless Chromium (Debian's, driven by
playwright over CDP) opens the `retrain` deployment, clicks Run -> Custom run, checks that
the form shows our parameters as a person needs them (the backbone dropdown lists the
registry, numbers carry their bounds and descriptions, defaults are sensible), sees an
out-of-range value refused, fills in a CPU-sized run and submits it. A worker runs it; the
new model version in the lake and the training report artifact are checked through the API.

Screenshots of every step go to .test-artifacts/ui/ (look there when it fails). Server,
browser and worker are started here and stopped by PID, also when the test fails. The
browser may only reach 127.0.0.1: every other request is aborted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tagger.config import TrainConfig
from tagger.backbones import BACKBONES, DEFAULT_BACKBONE
from tagger.model.versions import list_versions, read_card
from tagger.io.storage import open_storage
from tests.conftest import DEMO_TAXONOMY
from tests.prefect_server import (
    ROOT, api_client, artifacts, deploy_all, deployment, prefect_server, run_worker_until_done, stop,
)

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `playwright install` cannot download here
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / ".test-artifacts/ui"
# What a data scientist types into the Custom run form: a CPU-sized training run.
CPU_RUN = dict(backbone="test_efficientnet", image_size=48, epochs=1, pretrained=False, workers=0)


def _start_chromium(user_data_dir: Path) -> tuple[subprocess.Popen, str]:
    """Debian's Chromium with a fresh profile and DevTools on a free loopback port;
    returns the process (its own process group, for stop()) and the CDP URL."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: the UI test needs Debian's chromium package. "
                    "`make test` installs it (apt-get install chromium) when run as root; "
                    "elsewhere: sudo apt-get install chromium")
    proc = subprocess.Popen(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=open(user_data_dir.parent / "chromium.log", "w"),
        start_new_session=True)
    port_file = user_data_dir / "DevToolsActivePort"  # Chromium writes the port it bound
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail("chromium did not start:\n"
                        + (user_data_dir.parent / "chromium.log").read_text()[-3000:])
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port_file.read_text().split()[0]}"


@pytest.fixture
def browser_page(tmp_path):
    """A playwright page in a fresh headless Chromium that can reach loopback only."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: make setup (pip install -e '.[dev]')")

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc, cdp_url = _start_chromium(profile)
    blocked: list[str] = []

    def loopback_only(route):
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:  # e.g. the UI's analytics config fetch: nothing leaves the machine
            blocked.append(route.request.url)
            route.abort()

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(cdp_url)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route(re.compile(r"^(?!data:|blob:|about:).*"), loopback_only)
            context.set_default_timeout(30_000)
            yield context.new_page()
            context.close()
            browser.close()
    finally:
        stop(proc)
        print(f"blocked non-loopback requests: {sorted(set(blocked))}")


def _shot(page, name: str, full_page: bool = True) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=full_page)
    return path


def _field(form, title: str):
    """A number input of the config card, found as a person finds it: by its label."""
    return form.get_by_label(f"{title} (Optional)", exact=True)


def _box(form, title: str):
    """The innermost field box (label, description, input) of a field."""
    label = form.page.get_by_text(f"{title} (Optional)", exact=True)  # relative to each box
    return form.locator("div.group").filter(has=label).last


def test_custom_run_from_the_ui_trains_a_model(catalog, tmp_path, browser_page):
    from tagger.ingest.run import ingest_catalog

    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    page = browser_page
    lake = str(tmp_path / "lake")
    ingest_catalog(str(catalog), DEMO_TAXONOMY, lake)  # the catalog is in the lake already

    t_start = time.monotonic()
    with prefect_server(Path(tempfile.mkdtemp(dir=tmp_path)), ui=True) as server_env:
        env = deploy_all(server_env, lake, str(catalog), DEMO_TAXONOMY)
        api = api_client(env)
        retrain = deployment(api, "retrain")
        ui = env["PREFECT_UI_API_URL"].removesuffix("/api")

        # The deployment's page, then Run -> Custom run, as a person does it.
        t0 = time.monotonic()
        page.goto(f"{ui}/v2/deployments/deployment/{retrain['id']}")
        page.get_by_role("button", name="Run", exact=True).click()
        _shot(page, "01-deployment-run-menu")
        page.get_by_role("menuitem", name="Custom run").click()
        run_page = f"/v2/deployments/deployment/{retrain['id']}/run"
        page.wait_for_url(lambda url: urlsplit(url).path == run_page, wait_until="commit")
        form = page.get_by_role("main")
        form.get_by_role("button", name="Select Backbone").wait_for()  # renders ~1 s after the URL
        _shot(page, "02-custom-run-defaults")

        # The form as a person needs it: the deployed lake, the config card with our defaults.
        assert form.get_by_label("lake (Optional)", exact=True).input_value() == lake
        assert form.get_by_text("Training, threshold tuning and evaluation of one model version.").is_visible()
        backbone = form.get_by_role("button", name="Select Backbone")
        assert backbone.inner_text().strip() == DEFAULT_BACKBONE
        backbone.click()
        options = [o.strip() for o in page.get_by_role("option").all_inner_texts()]
        _shot(page, "03-backbone-dropdown")
        assert sorted(options) == sorted(BACKBONES), f"backbone dropdown: {options}"
        page.get_by_role("option", name="test_efficientnet", exact=True).click()
        assert backbone.inner_text().strip() == "test_efficientnet"
        described = lambda name: TrainConfig.model_fields[name].description  # noqa: E731
        for title, value, lo, hi, description in [
            ("Epochs", "10", "1", "500", described("epochs")),
            ("Weight Decay", "0.05", "0", "1", described("weight_decay")),
        ]:
            field = _field(form, title)
            assert (field.input_value(), field.get_attribute("min"), field.get_attribute("max")) == (
                value, lo, hi), title
            assert form.get_by_text(description, exact=True).is_visible(), title
        assert _field(form, "Pretrained").is_checked()  # production default: hub weights

        # Out of range: the browser refuses to submit, nothing reaches the server.
        epochs = _field(form, "Epochs")
        epochs.fill("0")
        form.get_by_role("button", name="Submit").click()
        validity = epochs.evaluate("e => [e.validity.valid, e.validationMessage]")
        _shot(page, "04-epochs-0-refused")
        assert validity[0] is False and "1" in validity[1], validity
        assert urlsplit(page.url).path == run_page
        # Only this deployment's runs: the server's scheduler adds the nightly deployment's
        # scheduled runs on its own.
        retrain_runs = {"flow_runs": {"deployment_id": {"any_": [retrain["id"]]}}}
        assert api.post("/flow_runs/filter", json=retrain_runs).json() == []

        # A CPU-sized run: tiny backbone, small images, one epoch, no hub, no loader workers.
        epochs.fill(str(CPU_RUN["epochs"]))
        image_size = _box(form, "Image Size")  # int | None: None (the backbone's own) until picked
        image_size.get_by_role("tab", name="int", exact=True).click()
        image_size.get_by_role("spinbutton").fill(str(CPU_RUN["image_size"]))
        workers = _box(form, "Workers")  # int | None: None (4 per GPU, 0 on the CPU) until picked
        assert workers.get_by_text(described("workers"), exact=True).is_visible()
        workers.get_by_role("tab", name="int", exact=True).click()
        count = workers.get_by_role("spinbutton")
        assert (count.get_attribute("min"), count.get_attribute("max")) == ("0", "64")
        count.fill(str(CPU_RUN["workers"]))
        _field(form, "Pretrained").click()
        assert not _field(form, "Pretrained").is_checked()
        _shot(page, "05-custom-run-filled")
        page.get_by_role("heading", name="Parameters").scroll_into_view_if_needed()
        page.mouse.wheel(0, -2000)
        _shot(page, "05-custom-run-filled-top", full_page=False)  # docs/custom-run.png
        form.get_by_role("button", name="Submit").click()
        # Submitted: back on the deployment's page, with the new run in its Runs list.
        page.wait_for_url(lambda url: urlsplit(url).path == run_page.removesuffix("/run"),
                          wait_until="commit")
        [run] = api.post("/flow_runs/filter", json=retrain_runs).json()
        run_id = run["id"]
        page.get_by_text(run["name"]).first.wait_for()
        print(f"UI: deployment page to submitted run: {time.monotonic() - t0:.1f} s")
        _shot(page, "06-flow-run-submitted")

        # Exactly what was typed reached the server; a worker runs it.
        run = api.get(f"/flow_runs/{run_id}").raise_for_status().json()
        assert run["deployment_id"] == retrain["id"]
        assert run["parameters"]["lake"] == lake
        sent = {k: run["parameters"]["config"].get(k) for k in CPU_RUN}
        assert sent == CPU_RUN, run["parameters"]
        t0 = time.monotonic()
        run_worker_until_done(env, api, run_id)
        print(f"retrain flow run through a worker: {time.monotonic() - t0:.1f} s")
        page.reload()
        page.get_by_text("Completed").first.wait_for()
        _shot(page, "07-deployment-run-completed")
        page.get_by_role("link", name=run["name"], exact=True).click()
        page.get_by_text("Completed").first.wait_for()
        _shot(page, "08-flow-run")
        page.get_by_role("tab", name="Artifacts", exact=True).click()
        page.get_by_text("model-report").first.wait_for()  # the report a person opens next
        _shot(page, "09-flow-run-artifacts")

        [version] = list_versions(open_storage(lake))
        card = read_card(open_storage(lake), version)
        assert (card.backbone, card.image_size) == ("test_efficientnet", 48), card
        report = artifacts(api, [run_id])["model-report"]["data"]
        assert f"# Model {version}" in report and "test_efficientnet" in report
    print(f"UI test, server start to server stop: {time.monotonic() - t_start:.1f} s")
