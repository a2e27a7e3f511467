"""A real MCP client driving `agentctl mcp` for tests/tests/mcp.rs: the official MCP Python
SDK (PyPI `mcp`, pinned by `cargo xtask deps`), nobody here wrote it. It spawns the server
over stdio, runs the acceptance steps and prints one JSON object with what it saw; the Rust
test asserts on it (and on `agentctl calls`). Any exception fails the run (exit 1).

usage: python mcp_client.py AGENTCTL SOCKET WORKSPACE
"""

import json
import sys
import time

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError


def text(r):
    return "\n".join(c.text for c in r.content if getattr(c, "type", "") == "text")


async def main():
    agentctl, socket, workspace = sys.argv[1:4]
    params = StdioServerParameters(
        command=agentctl,
        args=["--socket", socket, "mcp", "--workspace", workspace],
    )
    out = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            out["server"] = init.server_info.name
            out["protocol"] = init.protocol_version
            tools = await s.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            out["schemas"] = {t.name: t.input_schema for t in tools.tools}

            res = await s.list_resources()
            out["resources"] = [str(r.uri) for r in res.resources]
            session_uri = next(u for u in out["resources"] if not u.endswith("/calls"))
            out["session"] = session_uri.rsplit("/", 1)[-1]

            # 20 commands, each its own call.
            out["exec"] = []
            for i in range(20):
                r = await s.call_tool("exec", {"argv": ["sh", "-c", f"echo call-{i}; echo err-{i} >&2"]})
                sc = r.structured_content
                out["exec"].append(
                    {"call": sc["call"], "stdout": sc["stdout"], "stderr": sc["stderr"],
                     "is_error": r.is_error, "exit": sc["exit_code"]}
                )

            # Progress while a call runs.
            progress = []

            async def on_progress(p, total, message):
                progress.append({"progress": p, "message": message, "t": time.monotonic()})

            t0 = time.monotonic()
            r = await s.call_tool(
                "exec",
                {"command": "for i in 1 2 3 4; do echo tick $i; sleep 1; done"},
                progress_callback=on_progress,
            )
            out["progress"] = {"notes": progress, "started": t0, "ended": time.monotonic(),
                               "stdout": r.structured_content["stdout"]}

            # A 64M-intent call allocating 256M: OOM, said as such; the session goes on.
            r = await s.call_tool(
                "exec",
                {"argv": ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
                 "intent": {"memory": "64M"}},
            )
            out["oom"] = {"is_error": r.is_error, "text": text(r), "sc": r.structured_content}
            r = await s.call_tool("exec", {"command": "echo still-here"})
            out["after_oom"] = r.structured_content["stdout"]

            # Output over the bound: the cut is said.
            r = await s.call_tool("exec", {"command": "seq 1 100000", "max_output_bytes": 1000})
            out["bounded"] = {"sc": r.structured_content, "text": text(r)}

            # Files through the session.
            r = await s.call_tool("write_file", {"path": "notes/hello.txt", "content": "hello from mcp\n"})
            out["write_inside"] = {"is_error": r.is_error, "text": text(r)}
            r = await s.call_tool("read_file", {"path": "notes/hello.txt"})
            out["read_inside"] = {"is_error": r.is_error, "text": text(r)}
            r = await s.call_tool("list", {"path": "."})
            out["list"] = {"is_error": r.is_error, "text": text(r)}
            r = await s.call_tool("write_file", {"path": "/etc/agentd-mcp-escape.txt", "content": "x"})
            out["write_etc"] = {"is_error": r.is_error, "text": text(r)}
            r = await s.call_tool("write_file", {"path": "../escape.txt", "content": "x"})
            out["write_parent"] = {"is_error": r.is_error, "text": text(r)}

            # Input that does not match the schema: a JSON-RPC error with the reason.
            try:
                await s.call_tool("exec", {"argv": "ls"})
                out["invalid"] = None
            except MCPError as e:
                out["invalid"] = {"code": e.code, "message": e.message}
            try:
                await s.call_tool("approve", {})
                out["approve"] = None
            except MCPError as e:
                out["approve"] = {"code": e.code, "message": e.message}

            r = await s.call_tool("status", {})
            out["status"] = {"is_error": r.is_error, "text": text(r)}

            # Cancel: abandoning the request sends notifications/cancelled; the call's
            # cgroup is killed (exit 137) long before its 300 s.
            t0 = time.monotonic()
            with anyio.move_on_after(3):
                await s.call_tool("exec", {"argv": ["sleep", "300"]})
            out["cancel_waited"] = time.monotonic() - t0
            calls = []
            for _ in range(60):
                rr = await s.read_resource(session_uri + "/calls")
                calls = json.loads(rr.contents[0].text)
                if calls and calls[-1]["state"] != "running":
                    break
                await anyio.sleep(0.5)
            out["cancelled_call"] = calls[-1] if calls else None
            out["after_cancel"] = (await s.call_tool("exec", {"command": "echo alive"})).structured_content["stdout"]
    print(json.dumps(out))


anyio.run(main)
