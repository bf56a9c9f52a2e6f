"""The demo app's chat (examples/chat.py, what `make run` serves): two pages
in headless Chromium talk through the WebsocketConnectionView; each page is
checked for what it shows."""
import asyncio
import json
import os

from .cdp import Chromium
from .conftest import ROOT, http_get

LOG = "Array.from(document.querySelectorAll('#log li')).map(li => li.textContent)"


def say(text):
    return ("(() => { const t = document.getElementById('text'); t.value = %s;"
            " document.getElementById('send').click(); return true; })()"
            % json.dumps(text))


def test_two_pages_chat(gunicorn, tmp_path):
    path = [os.path.join(ROOT, "examples"), ROOT]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    server = gunicorn(app="app:main()",
                      env={"PYTHONPATH": os.pathsep.join(path)})
    status, body = http_get(server.port, "/chat")
    assert status == 200 and b"new WebSocket" in body
    url = "http://127.0.0.1:%d/chat" % server.port

    async def main():
        async with Chromium(tmp_path / "profile") as browser:
            alice = await browser.open(url)
            name_a = await alice.wait_for(
                "document.getElementById('status').dataset.name")
            bob = await browser.open(url)
            name_b = await bob.wait_for(
                "document.getElementById('status').dataset.name")
            assert name_a != name_b
            assert await alice.wait_for(
                "document.getElementById('status').textContent") == \
                "connected as " + name_a
            # alice sees bob join
            await alice.wait_for("%s.includes(%s)" % (
                LOG, json.dumps(name_b + " joined")))

            await alice.eval(say("hello from <b>alice</b> \u00e9\U0001f600"))
            line = "%s: hello from <b>alice</b> \u00e9\U0001f600" % name_a
            await bob.wait_for("%s.includes(%s)" % (LOG, json.dumps(line)))
            await alice.wait_for("%s.includes(%s)" % (LOG, json.dumps(line)))
            # shown as text, never as HTML
            assert await bob.eval("document.querySelectorAll('#log b').length") == 0

            await bob.eval(say("hi alice"))
            reply = "%s: hi alice" % name_b
            await alice.wait_for("%s.includes(%s)" % (LOG, json.dumps(reply)))
            await bob.wait_for("%s.includes(%s)" % (LOG, json.dumps(reply)))

            assert await alice.eval(LOG) == [
                name_b + " joined", line, reply]
            assert await bob.eval(LOG) == [line, reply]

            # bob's tab closes: alice is told
            await browser.send("Target.closeTarget", {
                "targetId": (await bob.call("Target.getTargetInfo"))
                ["targetInfo"]["targetId"]})
            await alice.wait_for("%s.includes(%s)" % (
                LOG, json.dumps(name_b + " left")))

    asyncio.run(asyncio.wait_for(main(), 120))
