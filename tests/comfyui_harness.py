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
import base64
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
    settings = base / "user" / "default" / "comfy.settings.json"
    if not settings.exists():  # no first-run template dialog over the canvas in frontend screenshots
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
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


# ----------------------------------------------------------------------------- UI → API format

# Saved widget values that the frontend keeps in widgets_values but never sends (they are not node inputs).
UI_ONLY_VALUES = ("control_after_generate", "upload")
# Frontend-only nodes (comments on the canvas): never sent.
VIRTUAL_NODES = ("Note", "MarkdownNote")


def ui_to_api(workflow: dict, saved_values: dict) -> dict:
    """The API prompt the frontend sends for a UI-format workflow (what graphToPrompt does for plain nodes).

    saved_values: node type → names of its widgets_values in order (UI-only entries named as in
    UI_ONLY_VALUES are dropped). Links become [from node id as str, from slot]; muted/bypassed nodes (mode ≠ 0)
    are left out.
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in VIRTUAL_NODES:
            continue
        names = saved_values[node["type"]]
        values = node.get("widgets_values") or []
        if len(values) != len(names):
            raise ValueError(f"node {node['id']} ({node['type']}) has {len(values)} widget values; expected "
                             f"{len(names)}: {names}")
        inputs = {n: v for n, v in zip(names, values) if n not in UI_ONLY_VALUES}
        for inp in node.get("inputs") or []:
            if inp.get("link") is not None:
                link = links[inp["link"]]
                inputs[inp["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# ----------------------------------------------------------------------------- the real frontend (optional)

def chromium_frontend(chromium: str, url: str, workflows: dict, work: Path, timeout: float = 120.0) -> dict:
    """Open ComfyUI's page in headless chromium and, for each UI-format workflow, call the page's
    ``app.loadGraphData`` and ``app.graphToPrompt``: the API prompt the browser would queue, the graph as the
    frontend re-serialises it, and the warnings it showed. Speaks the DevTools protocol through aiohttp
    (a ComfyUI requirement). Returns {name: {...}} plus 'screenshot' paths."""
    import asyncio

    import aiohttp

    port = free_port()
    profile = work / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           f"--remote-debugging-port={port}", "--window-size=2400,1100", "about:blank"]
    browser = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / "chromium.log", "w"),
                               start_new_session=True)

    async def session():
        end = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http_session:
            while True:
                try:
                    async with http_session.get(f"http://127.0.0.1:{port}/json") as r:
                        pages = [p for p in await r.json() if p.get("type") == "page"]
                    if pages:
                        break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > end:
                    raise TimeoutError("chromium's DevTools endpoint did not come up")
                await asyncio.sleep(0.5)
            async with http_session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                counter = iter(range(1, 1 << 30))

                async def call(method, **params):
                    msg_id = next(counter)
                    await ws.send_json({"id": msg_id, "method": method, "params": params})
                    async for msg in ws:
                        data = json.loads(msg.data)
                        if data.get("id") == msg_id:
                            if "error" in data:
                                raise RuntimeError(f"{method}: {data['error']}")
                            return data["result"]
                    raise RuntimeError("DevTools connection closed")

                async def evaluate(expr):
                    res = await call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
                    if "exceptionDetails" in res:
                        raise RuntimeError(json.dumps(res["exceptionDetails"])[:2000])
                    return res["result"].get("value")

                await call("Page.enable")
                await call("Page.navigate", url=url)
                while not await evaluate("!!(window.app && window.app.graph && window.app.graph.serialize)"):
                    if time.monotonic() > end:
                        raise TimeoutError("ComfyUI's frontend did not start in chromium")
                    await asyncio.sleep(0.5)
                await asyncio.sleep(2.0)  # let extensions register
                out = {}
                for name, wf in workflows.items():
                    expr = f"""(async () => {{
                        const toasts = [];
                        const wf = {json.dumps(wf)};
                        const before = console.warn; const warnings = [];
                        console.warn = (...a) => {{ warnings.push(a.map(String).join(' ')); before(...a); }};
                        try {{
                            await app.loadGraphData(wf, true, true, {json.dumps(name)});
                            const p = await app.graphToPrompt();
                            return JSON.stringify({{output: p.output, workflow: app.graph.serialize(),
                                                    warnings}});
                        }} finally {{ console.warn = before; }}
                    }})()"""
                    try:
                        out[name] = json.loads(await evaluate(expr))
                    except RuntimeError as e:
                        out[name] = {"error": str(e)}
                    try:
                        await evaluate("app.extensionManager.command.execute('Comfy.Canvas.FitView')")
                        await evaluate("(() => { const ds = app.canvas.ds; if (ds.scale < 0.65) ds.scale = 0.65; "
                                       "app.canvas.setDirty(true, true); return true; })()")
                    except RuntimeError:
                        pass
                    await asyncio.sleep(1.0)
                    shot = await call("Page.captureScreenshot", format="png")
                    path = work / f"{name}.png"
                    path.write_bytes(base64.b64decode(shot["data"]))
                    out[name]["screenshot"] = str(path)
                return out

    try:
        return asyncio.run(session())
    finally:
        stop(browser)


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
    ap.add_argument("--workflows", type=Path, nargs="*", default=[], help="UI-format workflows for the frontend")
    ap.add_argument("--chromium", help="chromium binary: load --workflows in the real frontend")
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
        if args.chromium and args.workflows:
            wfs = {w.stem: json.loads(w.read_text()) for w in args.workflows}
            result["frontend"] = chromium_frontend(args.chromium, url, wfs, args.base)
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
