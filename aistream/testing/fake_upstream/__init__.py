"""A fake OpenAI-compatible upstream that really speaks HTTP/1.1 (h11) and server-sent events.

``FakeUpstream`` is a small server on plain ``asyncio.start_server``. ``POST /v1/chat/completions``
with ``"stream": true`` answers chunks in the chat-completions format, as the real API does, and a
``Script`` says how: status, delays, what the stream says (answer tokens or exact text chunks,
reasoning, a refusal, tool calls, raw delta objects, usage details), how its bytes are cut, and
how it ends (normally, truncated, stalled, reset, malformed, or with an error event). Every
request gets a ``RequestRecord`` saying what arrived (``body``, ``messages``, ``param``), what
was sent and how the response ended, including whether the client closed the connection while
the response was in progress (``active()`` is the list of "ghost generations"). A reader task
per connection sees the client's EOF or reset at once, even while the fake is sleeping or
stalled; so a client that half-closes its side counts as gone. Non-streaming requests get a
400, unknown paths a 404 (both recorded)::

    async with FakeUpstream(Script(tokens=3, interval=0.01)) as fake:
        ...  # point a client at fake.base_url
        await fake.wait_idle()  # no ghost generations
        assert [r.outcome for r in fake.records] == ["completed"]

A request picks its script in this order:

1. a last user message starting with ``#fake {...}``: the JSON object's keys override the script
   the request would otherwise get (this is how other processes drive it);
2. the in-process callback ``FakeUpstream.script_for(body)``, if set and it returns a script;
3. ``FakeUpstream.script``, the default.

Out of process it is controlled over HTTP (``control``: records, stats, reset, the default
script); ``python -m aistream.testing.fake_upstream`` runs it until SIGTERM or SIGINT (``cli``).

The modules, each one concept:

- ``script``: the ``Script`` knobs and the ``#fake`` directive;
- ``parts``: the events of a stream with reasoning, text chunks, refusal, tool calls, raw deltas;
- ``body``: what is read from a request body (messages, model, limits, options);
- ``chunks``: pure rendering of chat-completion chunks and SSE events (``bench.upstream`` too);
- ``errors``: the JSON error bodies;
- ``records``: ``RequestRecord``, ``Outcome`` and the ``Journal`` that waits on them;
- ``connection``: one connection's HTTP/1.1 through h11, and its reader;
- ``respond``: answering one request as its script says;
- ``control``: the ``/_fake/`` control API;
- ``server``: ``FakeUpstream`` itself;
- ``cli``: the command line.
"""

from aistream.testing.fake_upstream.cli import main
from aistream.testing.fake_upstream.records import Outcome, RequestRecord
from aistream.testing.fake_upstream.script import DIRECTIVE, Script, ScriptFor
from aistream.testing.fake_upstream.server import FakeUpstream

__all__ = ["DIRECTIVE", "FakeUpstream", "Outcome", "RequestRecord", "Script", "ScriptFor", "main"]
