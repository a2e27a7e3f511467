#!/bin/sh
# A scripted "agent": what a coding agent does, as shell commands through $SHELL (the agentd
# shim), so each one becomes a tool call with its own cgroup, limits and report.
set -e
"$SHELL" -c 'ls -la'
"$SHELL" -c 'make'
"$SHELL" -c './hello'
"$SHELL" -c 'make test'
"$SHELL" -c 'echo "// reviewed by the agent" >> main.c && tail -n 1 main.c'
