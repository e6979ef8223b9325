"""A minimal client for `qwen-bench --serve` (runtime/runner/SERVE.md), used by tests/native/test_serve.py and
runtime/scripts/check_android_native.sh.

    with ServeClient([exe, "--serve", "--bundle", bundle]) as c:
        ready = c.ready
        tokens, done = c.generate([1, 2, 3], max_new_tokens=8)

As a script it runs one greedy generate through any command line (e.g. the packaged runner under qemu) and prints
the tokens as JSON:

    python serve_client.py --prompt-ids 1,2,3 --max-new-tokens 8 [--env-clear] -- CMD ARGS...
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading


class ServeError(RuntimeError):
    pass


class ServeClient:
    def __init__(self, argv, env=None, timeout: float = 600.0):
        self.timeout = timeout
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, env=env)
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()
        self.ready = self.read()

    def _pump(self, stream, out):
        for line in stream:
            out.put(line)
        out.put(None)

    def _drain(self):
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def send_line(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def send(self, request: dict) -> None:
        self.send_line(json.dumps(request))

    def read(self) -> dict:
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            raise ServeError(f"no reply within {self.timeout} s; stderr:\n{self.stderr[-3000:]}") from None
        if line is None:
            raise ServeError(f"the runner closed stdout (exit {self.proc.wait()}); stderr:\n{self.stderr[-3000:]}")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise ServeError(f"not a JSON line on stdout: {line!r}") from None

    def request(self, request: dict) -> dict:
        """Send a request that is answered by one line, and return that line."""
        self.send(request)
        return self.read()

    def collect(self) -> tuple[list[dict], dict]:
        """The token lines and the done line (or an error line) of a generate."""
        lines = []
        while True:
            r = self.read()
            if r["event"] == "token":
                lines.append(r)
            else:
                return lines, r

    def generate(self, prompt_ids, max_new_tokens: int, **settings) -> tuple[list[int], dict]:
        self.send(dict(op="generate", prompt_ids=list(prompt_ids), max_new_tokens=max_new_tokens, **settings))
        lines, done = self.collect()
        if done["event"] != "done":
            raise ServeError(f"generate failed: {done}")
        tokens = [t["token"] for t in lines]
        if tokens != done["tokens"] or [t["index"] for t in lines] != list(range(len(tokens))):
            raise ServeError(f"token lines {tokens} disagree with the done line {done['tokens']}")
        return tokens, done

    def close(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-ids", required=True)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="the runner's whole environment (repeat; default: inherit this one)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("give the runner's command line after --")
    env = dict(kv.split("=", 1) for kv in a.env) if a.env else None
    ids = [int(x) for x in a.prompt_ids.split(",")]
    with ServeClient(cmd, env=env, timeout=a.timeout) as c:
        if c.ready.get("event") != "ready":
            print(json.dumps(c.ready), file=sys.stderr)
            return 1
        tokens, done = c.generate(ids, a.max_new_tokens, stop_at_stop_ids=False)
        bye = c.request({"op": "quit"})
        rc = c.close()
    print(json.dumps({"ready": c.ready, "tokens": tokens, "done": done, "bye": bye, "exit": rc}))
    return 0 if bye.get("event") == "bye" and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
