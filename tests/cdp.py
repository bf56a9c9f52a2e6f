"""Headless Chromium (Debian's ``chromium``) driven through its DevTools
protocol over a websocket (the ``websockets`` client): pages opened,
JavaScript evaluated in them.  Every wait is bounded."""
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess

from websockets.asyncio.client import connect


class Chromium:
    """``async with Chromium(profile_dir) as browser: page = await
    browser.open(url)``."""

    def __init__(self, profile_dir, timeout=30.0):
        self.profile_dir = str(profile_dir)
        self.timeout = timeout
        self.proc = None
        self.conn = None
        self.reader = None
        self.ids = itertools.count(1)
        self.waiting = {}
        self.log_path = os.path.join(self.profile_dir, "chromium.log")

    async def __aenter__(self):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise RuntimeError(
                "chromium is not installed: `make deps` (part of `make "
                "test`) installs Debian's chromium package")
        os.makedirs(self.profile_dir, exist_ok=True)
        port_file = os.path.join(self.profile_dir, "DevToolsActivePort")
        if os.path.exists(port_file):
            os.unlink(port_file)
        # the browser is no part of what is tested: not under the
        # sanitizer runtime that `make test-asan` preloads into our process
        env = {k: v for k, v in os.environ.items()
               if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS",
                            "PYTHONMALLOC")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [exe, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions",
                 "--disable-background-networking",
                 "--remote-debugging-address=127.0.0.1",
                 "--remote-debugging-port=0",
                 "--user-data-dir=" + self.profile_dir, "about:blank"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError("chromium exited: " + self.log())
                    if os.path.exists(port_file):
                        with open(port_file) as f:
                            lines = f.read().split()
                        if len(lines) >= 2:
                            break
                    await asyncio.sleep(0.1)
            url = "ws://127.0.0.1:%s%s" % (lines[0], lines[1])
            self.conn = await connect(url, max_size=None, open_timeout=10,
                                      ping_interval=None)
        except BaseException:
            self.kill()
            raise
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc):
        if self.reader is not None:
            self.reader.cancel()
        if self.conn is not None:
            try:
                await asyncio.wait_for(self.conn.close(), 5)
            except (asyncio.TimeoutError, OSError):
                pass
        self.kill()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    async def _read(self):
        try:
            async for raw in self.conn:
                message = json.loads(raw)
                future = self.waiting.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        finally:
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("DevTools closed"))

    async def send(self, method, params=None, session=None):
        """The result of one DevTools command (RuntimeError on its error)."""
        call_id = next(self.ids)
        message = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = future
        await self.conn.send(json.dumps(message))
        reply = await asyncio.wait_for(future, self.timeout)
        if "error" in reply:
            raise RuntimeError("%s: %s" % (method, reply["error"]))
        return reply.get("result", {})

    async def open(self, url):
        """A new page (tab) showing url."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.call("Page.navigate", {"url": url})
        await page.wait_for("document.readyState === 'complete' && "
                            "location.href === %s" % json.dumps(url))
        return page


class Page:
    def __init__(self, browser, session):
        self.browser = browser
        self.session = session

    def call(self, method, params=None):
        return self.browser.send(method, params, self.session)

    async def eval(self, expression):
        """The value of a JavaScript expression in the page."""
        result = await self.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True,
            "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError("JavaScript error in %r: %s" % (
                expression, result["exceptionDetails"]))
        return result["result"].get("value")

    async def wait_for(self, expression, timeout=20.0):
        """Polls until the expression is truthy; its value."""
        async with asyncio.timeout(timeout):
            while True:
                value = await self.eval(expression)
                if value:
                    return value
                await asyncio.sleep(0.05)
