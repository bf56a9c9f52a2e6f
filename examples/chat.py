"""The chat room of the demo app: a page (chat.html) whose tabs talk
through one websocket view, a ``WebsocketConnectionView``.

/chat      the page (HTML and a little JavaScript, no build step)
/chat/ws   the websocket: each message a tab sends goes to every tab
"""
import asyncio
import itertools
import json
import os

from pyramid.response import FileResponse

from aiopyramid.websocket.config import WebsocketMapper
from aiopyramid.websocket.exceptions import WebsocketClosed
from aiopyramid.websocket.view import WebsocketConnectionView

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_TEXT = 2000

_guests = itertools.count(1)


def chat_page(request):
    return FileResponse(os.path.join(HERE, "chat.html"), request=request,
                        content_type="text/html")


class ChatRoom(WebsocketConnectionView):
    """One tab's connection.  Every member of ``room`` gets each message as
    JSON: {"type": "message", "from": name, "text": ...}; joins and leaves
    are announced the same way (type "join" / "leave"), and a new member
    first gets {"type": "welcome", "name": its name}."""

    __view_mapper__ = WebsocketMapper
    room = set()

    async def broadcast(self, **event):
        data = json.dumps(event)
        members = list(self.room)
        results = await asyncio.gather(
            *(m.send(data) for m in members), return_exceptions=True)
        for member, result in zip(members, results):
            if isinstance(result, WebsocketClosed):
                self.room.discard(member)  # gone meanwhile

    async def on_open(self):
        self.name = "guest-%d" % next(_guests)
        await self.send(json.dumps({"type": "welcome", "name": self.name}))
        await self.broadcast(type="join", name=self.name)  # to the others
        self.room.add(self)

    async def on_message(self, message):
        if not isinstance(message, str):
            return  # text only
        text = message.strip()[:MAX_TEXT]
        if text:
            await self.broadcast(type="message", name=self.name, text=text)

    async def on_close(self):
        if self in self.room:
            self.room.discard(self)
            await self.broadcast(type="leave", name=self.name)


def includeme(config):
    config.add_route("chat", "/chat")
    config.add_view(chat_page, route_name="chat")
    config.add_route("chat_ws", "/chat/ws")
    config.add_view(ChatRoom, route_name="chat_ws")
