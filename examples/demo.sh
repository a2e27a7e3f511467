#!/bin/sh
# Demo of agentd's main job, for the test VM (needs root and cgroup v2):
#   cargo xtask vm-run -- sh examples/demo.sh
# Starts a daemon, runs examples/scripted-agent.sh in a session on a copy of the sample repo,
# then lists the session's tool calls with their per-call resource reports, shows the agent's
# diff, undoes its last call and commits the rest to the repo.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/agentd-demo.XXXXXX)
chmod 755 "$work"
cp -r "$here/sample-repo" "$work/repo"
# The agent's script goes into the workspace: the session sees the host root read-only but
# has its own /tmp, so a checkout under /tmp is visible inside only as the workspace.
cp "$here/scripted-agent.sh" "$work/repo/agent.sh"
chown -R 1000:1000 "$work/repo"      # the agent runs as the workspace's owner, never root
agentd serve --socket "$work/agentd.sock" --state-dir "$work/state" \
    --cgroup-root /sys/fs/cgroup/agentd-demo.slice > "$work/agentd.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$work/agentd.sock" ] && break; sleep 0.1; done
export AGENTD_SOCKET="$work/agentd.sock"
echo "== agentctl run (the scripted agent, default profile)"
agentctl run --workspace "$work/repo" -- sh ./agent.sh
id=$(agentctl --json ps | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
echo "== agentctl calls $id"
agentctl calls "$id"
echo "== the repo itself is untouched (the agent wrote to its overlay):"
tail -n 1 "$work/repo/main.c"
echo "== agentctl diff $id --stat (everything the agent changed)"
agentctl diff "$id" --stat
echo "== agentctl diff $id --call 5 (what its last tool call changed)"
agentctl diff "$id" --call 5
cp=$(agentctl --json checkpoints "$id" |
    python3 -c 'import json,sys; print([c["id"] for c in json.load(sys.stdin) if c["call"] == 5][0])')
echo "== agentctl undo $id --to $cp (the checkpoint before call 5: drop the edit of main.c)"
agentctl undo "$id" --to "$cp"
echo "== agentctl commit $id (keep the rest: the build output)"
agentctl commit "$id"
echo "== the repo now has the agent's build, and main.c without the undone edit:"
ls "$work/repo/hello"
tail -n 1 "$work/repo/main.c"
agentctl rm "$id" > /dev/null
