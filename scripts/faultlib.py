# Shared by scripts/soak, slow-clients, kill-during-enroll, disk-full and bad-model: start the real facegate
# binary on loopback with the simulated door, post frames, and read the daemon's memory, threads and journal.
# Standard library only; everything stays on 127.0.0.1 and under a temporary directory.

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "fault-script-token"
ASSETS = Path(os.environ.get("FACEGATE_ASSETS", REPO / "assets"))
FETCH_HINT = "run `FACEGATE_MIRROR=/work/shared scripts/fetch-assets` (or scripts/fetch-assets with internet access)"


def die(message):
    sys.exit(f"{Path(sys.argv[0]).name}: {message}")


def binary(explicit=None):
    """The facegate binary: --binary, else target/release/facegate, else target/debug/facegate."""
    candidates = [Path(explicit)] if explicit else [REPO / "target/release/facegate", REPO / "target/debug/facegate"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    die(f"no facegate binary at {', '.join(map(str, candidates))}: build it with `cargo build --release`")


def check_assets():
    for sub in ("models", "faces"):
        if not (ASSETS / sub).is_dir():
            die(f"{ASSETS / sub} is missing: {FETCH_HINT}")


def photo(relative):
    path = ASSETS / "faces" / relative
    if not path.is_file():
        die(f"test photo {path} is missing: {FETCH_HINT}")
    return path


def people():
    """{name: [photo paths]} for the identity folders (not starting with _), sorted."""
    check_assets()
    found = {}
    for folder in sorted((ASSETS / "faces").iterdir()):
        if folder.is_dir() and not folder.name.startswith("_") and folder.name != "LICENSES":
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if files:
                found[folder.name] = files
    return found


def toml_string(value):
    return json.dumps(str(value))


def write_config(directory, http="", tables="", state_dir=None, models_dir=None):
    """A config for one scripted run: token required, sim door journalled under `directory`.
    `http` adds lines to [http]; `tables` adds whole tables other than [http] and [door]."""
    directory = Path(directory)
    text = (
        f"state_dir = {toml_string(state_dir or directory / 'state')}\n"
        f"models_dir = {toml_string(models_dir or ASSETS / 'models')}\n\n"
        f"[http]\nrequire_token = true\ntoken = {toml_string(TOKEN)}\n{http}\n"
        f"[door]\nbackend = \"sim\"\nsim_journal = {toml_string(directory / 'door.jsonl')}\n\n"
        f"{tables}"
    )
    path = directory / "facegate.toml"
    path.write_text(text)
    return path


def enroll(facegate, config, name, photos):
    result = subprocess.run(
        [str(facegate), "--config", str(config), "enroll", "--name", name, *map(str, photos)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        die(f"facegate enroll --name {name} failed:\n{result.stderr}")
    return result


class Daemon:
    """`facegate serve --listen 127.0.0.1:0`, its log in a file, its address parsed from the log."""

    def __init__(self, facegate, config, log_path, wait_seconds=60):
        self.log_path = Path(log_path)
        self.log_file = open(self.log_path, "wb")
        child_env = dict(os.environ)
        child_env.pop("FACEGATE_TOKEN", None)
        child_env.setdefault("RUST_LOG", "info")
        self.process = subprocess.Popen(
            [str(facegate), "--config", str(config), "serve", "--listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            env=child_env,
        )
        self.address = None
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            match = re.search(r"facegate listening on http://(\S+)", self.log())
            if match:
                host, port = match.group(1).rsplit(":", 1)
                self.address = (host, int(port))
                return
            if self.process.poll() is not None:
                return
            time.sleep(0.02)

    @property
    def pid(self):
        return self.process.pid

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.process.poll() is None

    def status(self):
        """VmRSS, VmHWM (KiB), threads and open descriptors of the daemon."""
        fields = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                fields[key] = value.split()
            descriptors = len(os.listdir(f"/proc/{self.pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            return None
        return {
            "rss_kib": int(fields.get("VmRSS", ["0"])[0]),
            "hwm_kib": int(fields.get("VmHWM", ["0"])[0]),
            "threads": int(fields.get("Threads", ["0"])[0]),
            "fds": descriptors,
        }

    def stop(self, timeout=20):
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        return self.process.returncode


def journal(path):
    """The simulated relay's journal: one dict per actuation."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def frame_body(path):
    return base64.b64encode(Path(path).read_bytes())


class Client:
    """A keep-alive client for POST /image; reconnects when the daemon closes the connection."""

    def __init__(self, address, timeout=30):
        self.address = address
        self.timeout = timeout
        self.connection = None

    def post(self, body, path="/image", token=TOKEN):
        headers = {"Content-Type": "text/plain"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in range(2):
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPConnection(*self.address, timeout=self.timeout)
                self.connection.request("POST", path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                try:
                    answer = json.loads(data)
                except ValueError:
                    answer = {}
                return response.status, answer
            except (OSError, http.client.HTTPException) as err:
                self.close()
                if attempt == 1:
                    return 0, {"error": f"{type(err).__name__}: {err}"}
        return 0, {}

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def temp_dir(prefix):
    return tempfile.TemporaryDirectory(prefix=prefix)
