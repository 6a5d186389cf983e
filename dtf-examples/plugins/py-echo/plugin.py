#!/usr/bin/env python3
"""An example external dtf plugin, standard library only (protocol version 1).

The host writes one JSON object per line on our stdin and reads one per line from our
stdout (see docs/external-plugins.md):

    host -> plugin: hello, event, shutdown
    plugin -> host: hello, ack, error, log, publish

For every event it receives, this plugin publishes a custom event `<name>.received` with
the hook, the event's sequence number and the task id, then acknowledges the event. The
tests drive its failure modes through task ids (`stderr-bytes` writes bytes that are not UTF-8 to
stderr and carries on; `log-flood` sends 5,000 `log` messages, then carries on; `stderr-flood`
writes 5,000 lines to stderr, then carries on): a task named
`crash` makes it exit, `garbage`
makes it write a line that is not JSON, `hang` makes it stop answering, `fail` makes it
answer with an error.

Options: `--tag TEXT` adds `"tag": TEXT` to every publication (to tell versions apart);
`--reply-protocol N` answers the handshake with version N whatever the host offers;
`--ignore-shutdown` keeps running after `shutdown` (the host kills it after the grace period).
"""

import json
import os
import sys
import time

PROTOCOL = 1


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def log(level, message):
    send({"type": "log", "level": level, "message": message})


def option(args, name, default=None):
    if name in args:
        return args[args.index(name) + 1]
    return default


def main():
    args = sys.argv[1:]
    tag = option(args, "--tag")
    forced = option(args, "--reply-protocol")
    name = os.environ.get("DTF_PLUGIN_NAME", "py-echo")
    config = {}

    for line in sys.stdin:
        message = json.loads(line)
        kind = message.get("type")
        if kind == "hello":
            offered = message.get("protocol_versions", [])
            if forced is not None:
                chosen = int(forced)
            elif PROTOCOL in offered:
                chosen = PROTOCOL
            else:
                log("error", "no common protocol version in %r" % offered)
                return 2
            config = message.get("config") or {}
            send({"type": "hello", "protocol_version": chosen, "name": name, "version": "0.1.0"})
            # Which environment variables we got: the tests check no secret leaked in.
            log("info", "ready; environment: %s" % ",".join(sorted(os.environ)))
        elif kind == "event":
            event = message["event"]
            payload = event["kind"].get("data") or {}
            task = payload.get("task") if isinstance(payload, dict) else None
            if task == "crash":
                sys.exit(3)
            if task == "garbage":
                sys.stdout.write("this is not json\n")
                sys.stdout.flush()
                continue
            if task == "hang":
                time.sleep(3600)
            if task == "stderr-bytes":
                # Not UTF-8, then more stderr: the host must keep reading it.
                sys.stderr.buffer.write(b"caf\xe9\n")
                sys.stderr.flush()
            if task == "log-flood":
                for i in range(5000):
                    log("info", "flood %d" % i)
            if task == "stderr-flood":
                for i in range(5000):
                    sys.stderr.write("stderr flood %d\n" % i)
                sys.stderr.flush()
            if task == "fail":
                send({"type": "error", "id": message["id"], "message": "cannot handle task fail"})
                continue
            received = {
                "hook": event["kind"]["type"],
                "seq": event["meta"]["seq"],
                "task": task,
                "greeting": config.get("greeting"),
            }
            if tag is not None:
                received["tag"] = tag
            send({"type": "publish", "name": name + ".received", "payload": received})
            send({"type": "ack", "id": message["id"]})
        elif kind == "shutdown":
            if "--ignore-shutdown" in args:
                log("warn", "ignoring shutdown")
                time.sleep(3600)
            log("info", "shutting down")
            return 0
        else:
            log("warn", "unknown message type %r" % kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
