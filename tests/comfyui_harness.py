"""Start a real ComfyUI headless with this pack, query /object_info, run API-format prompts, stop it.

Run with the ComfyUI venv's python (tests/test_comfyui.py does this in a subprocess):

    python tests/comfyui_harness.py --comfyui DIR --base BASE [--prompts prompts.json] --result result.json

BASE is a prepared ComfyUI base directory (custom_nodes/, input/, models/ ...; see --base-directory); the pack
must already be linked into BASE/custom_nodes. prompts.json maps a name to an API-format prompt
({"node id": {"class_type", "inputs"}}). result.json gets: the log's IMPORT FAILED lines, /object_info
entries whose id starts with --prefix, and for each prompt its status, outputs and error messages.
Uses only the standard library; binds 127.0.0.1 on a free port; never reaches anything else.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: dict | None = None, timeout: float = 30.0):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text)
        except json.JSONDecodeError:
            return e.code, text


def start(comfyui: Path, base: Path, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(base),
           "--output-directory", str(base / "output"), "--temp-directory", str(base / "temp"),
           "--user-directory", str(base / "user"), "--database-url", f"sqlite:///{base / 'db.sqlite'}"]
    for d in ("output", "temp", "user", "input", "models", "custom_nodes"):
        (base / d).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {proc.returncode} before it was ready")
        try:
            status, _ = http(f"{url}/system_stats", timeout=5)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"ComfyUI not ready after {timeout:.0f} s")


def run_prompt(url: str, prompt: dict, timeout: float) -> dict:
    status, answer = http(f"{url}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    if status != 200:
        return {"status": "rejected", "http_status": status, "error": answer}
    pid = answer["prompt_id"]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _, history = http(f"{url}/history/{pid}")
        entry = (history or {}).get(pid)
        if entry:  # history holds a prompt once it has finished, with or without errors
            st = entry.get("status", {})
            errors = [m[1] for m in st.get("messages", []) if m[0] == "execution_error"]
            outputs = entry.get("outputs", {})
            return {"status": st.get("status_str"), "outputs": outputs, "errors": errors,
                    "views": {node: [view(url, im) for im in out.get("images", [])] for node, out in outputs.items()}}
        time.sleep(0.2)
    return {"status": "timeout"}


def view(url: str, image: dict) -> dict:
    """Fetch an output image through GET /view (temp files are deleted when ComfyUI stops): size and magic."""
    query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
    try:
        with urllib.request.urlopen(f"{url}/view?{query}", timeout=30) as r:
            data = r.read()
        return {"bytes": len(data), "riff": data[:4].decode("latin-1"), "format": data[8:12].decode("latin-1"),
                "content_type": r.headers.get("Content-Type")}
    except urllib.error.HTTPError as e:
        return {"http_status": e.code}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--prompts", type=Path)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--prefix", default="FinePhys")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--prompt-timeout", type=float, default=180.0)
    args = ap.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = args.base / "comfyui.log"
    result: dict = {"url": url, "log": str(log_path)}
    proc = start(args.comfyui.resolve(), args.base.resolve(), port, log_path)
    t0 = time.monotonic()
    try:
        wait_ready(proc, url, args.start_timeout)
        result["ready_s"] = round(time.monotonic() - t0, 1)
        _, info = http(f"{url}/object_info", timeout=60)
        result["object_info"] = {k: v for k, v in info.items() if k.startswith(args.prefix)}
        result["core_node_count"] = len(info)
        prompts = json.loads(args.prompts.read_text()) if args.prompts else {}
        result["prompts"] = {name: run_prompt(url, p, args.prompt_timeout) for name, p in prompts.items()}
    except Exception as e:  # report, do not hide: the test prints the log tail
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        stop(proc)
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        result["import_failed"] = [line for line in log.splitlines() if "IMPORT FAILED" in line]
        result["log_tail"] = log[-6000:]
        args.result.write_text(json.dumps(result, indent=1))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
