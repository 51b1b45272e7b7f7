#!/usr/bin/env python3
"""The dashboard in a real browser (Debian's chromium + chromium-driver, driven by selenium).

Starts a local 3-node cluster (`paddock dev up --detach`), logs in with the admin token,
sees the nodes and a VM, starts a live migration from the page (the migrate button, its
destination prompt answered) and watches its progress bar until the migration is listed as
completed; then checks that a viewer sees no action buttons and that the server refuses a
viewer's action anyway. Screenshots go to docs/img/.

Skips (exit 0, with the reason printed) when chromedriver or selenium is missing.
Usage: tests/browser/dashboard.py [path/to/target/debug]
"""

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug")
SHOTS = os.path.join(ROOT, "docs", "img")
BASE_PORT = 7801
API = "https://127.0.0.1:%d" % (BASE_PORT + 200)


def skip(reason):
    print("SKIP browser test: " + reason)
    sys.exit(0)


driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not os.path.exists(driver_path):
    skip("no chromedriver (install Debian's chromium and chromium-driver)")
try:
    os.environ["SE_OFFLINE"] = "true"  # never let selenium download a driver
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:
    skip("python selenium is not installed (pip install selenium)")


def wait_for(what, check, timeout=60.0, every=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # the page may be re-rendering
            last = e
        time.sleep(every)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def main():
    workdir = tempfile.mkdtemp(prefix="paddock-browser-")
    paddock = os.path.join(BIN, "paddock")
    up = subprocess.run(
        [paddock, "dev", "up", "--dir", workdir, "--base-port", str(BASE_PORT), "--detach",
         # guests whose memory is written, so a migration has 64 MiB to send
         "--paddockd-arg=--memvm-fill=64MiB"],
        capture_output=True, text=True, timeout=120,
    )
    if up.returncode != 0:
        raise SystemExit("dev up failed:\n" + up.stdout + up.stderr)
    certs = os.path.join(workdir, "certs")
    env = dict(os.environ, PADDOCK_ENDPOINT="127.0.0.1:%d" % BASE_PORT, PADDOCK_CERTS_DIR=certs)
    tls = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
    admin = open(os.path.join(workdir, "token")).read().strip()

    def api(method, path, token, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(API + path, data=data, method=method)
        request.add_header("Authorization", "Bearer " + token)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=tls, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    browser = None
    try:
        # A VM to look at and move; slow migrations so the progress bar is seen moving.
        subprocess.run([paddock, "cluster", "set", "migration_node_bandwidth", "8MiB"], env=env, check=True, capture_output=True)
        status, vm = api("POST", "/api/v1/vms", admin, {"name": "web-1", "spec": {"cpus": 1, "memory_mib": 96, "ha": True}})
        assert status == 201, (status, vm)
        wait_for("web-1 running", lambda: api("GET", "/api/v1/vms/web-1", admin)[1]["summary"]["state"] == "running")

        options = webdriver.ChromeOptions()
        for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100",
                    "--ignore-certificate-errors", "--disable-dev-shm-usage"]:
            options.add_argument(arg)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        browser.set_page_load_timeout(30)

        # Log in.
        browser.get(API + "/ui")
        wait_for("the login page", lambda: "Log in" in browser.title)
        browser.find_element(By.NAME, "token").send_keys(admin)
        browser.find_element(By.ID, "login").click()
        wait_for("the overview", lambda: "Overview" in browser.title)

        # The nodes and the VM are there; the event stream is live.
        for name in ["n1", "n2", "n3"]:
            wait_for("node " + name, lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-node="%s"]' % name))
        row = wait_for("the VM row", lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-vm="web-1"]'))
        assert "running" in row.text, row.text
        source = api("GET", "/api/v1/vms/web-1", admin)[1]["summary"]["node"]
        destination = [n for n in ["n1", "n2", "n3"] if n != source][0]
        wait_for("the live event stream", lambda: browser.find_element(By.ID, "stream-state").text == "live")
        browser.save_screenshot(os.path.join(SHOTS, "dashboard-overview.png"))

        # Migrate from the page: the button asks for the destination.
        row.find_element(By.CSS_SELECTOR, "button.migrate").click()
        alert = wait_for("the destination prompt", lambda: browser.switch_to.alert)
        alert.send_keys(destination)
        alert.accept()

        # The progress bar moves, then the migration is listed as completed.
        seen = set()
        def progress():
            # Read in one script: the fragment is replaced under us every second.
            bars, done = browser.execute_script(
                "return [[...document.querySelectorAll('div.migration .bar.progress span')].map(e => e.textContent),"
                " document.querySelectorAll('#migrations tr[data-migration] .phase.completed').length]")
            seen.update(bars)
            return done > 0
        shot_taken = False
        deadline = time.time() + 120
        while not progress():
            if not shot_taken and browser.find_elements(By.CSS_SELECTOR, "div.migration"):
                browser.save_screenshot(os.path.join(SHOTS, "dashboard-migration.png"))
                shot_taken = True
            if time.time() > deadline:
                raise AssertionError("the migration never showed completed; bars seen: %r" % sorted(seen))
            time.sleep(0.2)
        moving = [t for t in seen if t not in ("0%", "100%")]
        assert moving, "the progress bar was never seen between 0 and 100%%: %r" % sorted(seen)
        print("progress bar values seen:", sorted(seen, key=lambda t: float(t.rstrip("%") or 0)))
        now = api("GET", "/api/v1/vms/web-1", admin)[1]["summary"]
        assert now["node"] == destination and now["state"] == "running", now
        # The live log shows the migration's events.
        wait_for("migration events in the log", lambda: "migration" in browser.find_element(By.ID, "event-log").text)
        browser.save_screenshot(os.path.join(SHOTS, "dashboard-completed.png"))

        # A viewer: no action buttons, and the server refuses the action anyway.
        status, created = api("POST", "/api/v1/tokens", admin, {"name": "look", "role": "viewer"})
        assert status == 201, (status, created)
        viewer = created["token"]
        browser.find_element(By.CSS_SELECTOR, "header form button").click()
        wait_for("logged out", lambda: "Log in" in browser.title)
        browser.find_element(By.NAME, "token").send_keys(viewer)
        browser.find_element(By.ID, "login").click()
        wait_for("the viewer's overview", lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-vm="web-1"]'))
        assert not browser.find_elements(By.CSS_SELECTOR, "button[data-post]"), "a viewer sees action buttons"
        status, problem = api("POST", "/api/v1/vms/web-1/stop", viewer, {})
        assert status == 403 and problem["kind"] == "permission_denied", (status, problem)
        # Nor can a page make the viewer's browser act with the cookie but without the CSRF token.
        result = browser.execute_script(
            "return fetch('/api/v1/vms/web-1/stop', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'}).then(r => r.status)")
        assert result == 403, result
        browser.save_screenshot(os.path.join(SHOTS, "dashboard-viewer.png"))
        print("browser test passed: login, nodes, VM, migration %s -> %s completed, viewer refused" % (source, destination))
    finally:
        if browser is not None:
            browser.quit()
        subprocess.run([paddock, "dev", "down", "--dir", workdir], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
