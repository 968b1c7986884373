#!/usr/bin/env python3
"""Shows that each loom model catches a broken variant of its protocol.

For each mutant below: apply one small edit to the source, run the loom
models that should catch it, restore the source. A mutant is *caught* when
the models fail (deadlock, failed assertion or panic in some interleaving);
the script exits non-zero if any mutant survives, or if the unmutated models
fail.

    python3 scripts/loom_mutants.py            # all (each rebuilds: ~1 min)
    python3 scripts/loom_mutants.py fence      # mutants whose name has "fence"

The models are in tests/loom.rs (the service) and
vendor/tiny_http/src/inline/gate.rs (the fork); scripts/loom.sh runs them.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICE = ["--test", "loom"]
FORK = ["-p", "product-update-tiny-http", "--lib", "gate"]

# (name, file, [(old, new), ...], cargo test arguments)
MUTANTS = [
    (
        "handoff: post does not ring a sleeping committer",
        "src/intake/mailbox.rs",
        [(
            "        state.pending.push(item);\n        if state.sleeping > 0 {\n            self.bell.notify_one();\n        }\n",
            "        state.pending.push(item);\n",
        )],
        SERVICE,
    ),
    (
        "handoff: the committer decides to sleep after its last look, in another lock section",
        "src/intake/mailbox.rs",
        [(
            "            state.sleeping += 1;\n            state = sync::wait_for_bell",
            "            drop(state);\n            state = self.lock();\n            state.sleeping += 1;\n            state = sync::wait_for_bell",
        )],
        SERVICE,
    ),
    (
        "handoff: finish wakes only one of two sleeping committers",
        "src/intake/mailbox.rs",
        [(
            "        state.finishing = true;\n        self.bell.notify_all();",
            "        state.finishing = true;\n        self.bell.notify_one();",
        )],
        SERVICE,
    ),
    (
        "handoff: a committer without a connection waits on the bell that posts ring",
        "src/intake/mailbox.rs",
        [(
            "            state = sync::wait_for_bell(&self.closing, state, left);",
            "            state = sync::wait_for_bell(&self.bell, state, left);",
        )],
        SERVICE,
    ),
    (
        "handoff: a committer standing by ignores a rouse before its wait",
        "src/intake/mailbox.rs",
        [(
            "        while !state.finishing && state.rousings == seen {",
            "        let _ = seen;\n        while !state.finishing {",
        )],
        SERVICE,
    ),
    (
        "handoff: rouse wakes nobody",
        "src/intake/mailbox.rs",
        [(
            "        state.rousings += 1;\n        self.closing.notify_all();\n    }",
            "        state.rousings += 1;\n    }",
        )],
        SERVICE,
    ),
    (
        "handoff: post does not look at finishing",
        "src/intake/mailbox.rs",
        [(
            "        if state.finishing || state.stopped {\n            return Err((Refused::Closed, item));",
            "        if state.stopped {\n            return Err((Refused::Closed, item));",
        )],
        SERVICE,
    ),
    (
        "doorbell: a worker counts itself as a sleeper after its last look",
        "src/intake/queue.rs",
        [(
            "        self.sleepers.fetch_add(1, Ordering::SeqCst);\n",
            "        let waiting = work_waiting();\n"
            "        self.sleepers.fetch_add(1, Ordering::SeqCst);\n",
        ), (
            "            _ if work_waiting() => closed,\n",
            "            _ if waiting => closed,\n",
        )],
        SERVICE,
    ),
    (
        "doorbell: ring's fence removed",
        "src/intake/queue.rs",
        [(
            "        fence(Ordering::SeqCst);\n        if self.lingerers.load",
            "        if self.lingerers.load",
        )],
        SERVICE,
    ),
    (
        "doorbell: the waiting worker's fence removed",
        "src/intake/queue.rs",
        [(
            "        fence(Ordering::SeqCst);\n        let _closed = match linger {",
            "        let _closed = match linger {",
        )],
        SERVICE,
    ),
    (
        "doorbell: a lingerer sleeps untimed after its timed wait without looking again",
        "src/intake/queue.rs",
        [(
            "Some(timeout) => sync::wait_timeout(&self.bell, closed, timeout),",
            "Some(timeout) => sync::wait(&self.bell, sync::wait_timeout(&self.bell, closed, timeout)),",
        )],
        SERVICE,
    ),
    (
        "intake: close counts the accepted events and drops the sender in two steps",
        "src/intake/mod.rs",
        [(
            "        let mut state = self.lock();\n"
            "        state.job_tx = None;\n"
            "        let accepted = state.next_seq - 1 - state.base;\n"
            "        drop(state);\n",
            "        let accepted = {\n"
            "            let state = self.lock();\n"
            "            state.next_seq - 1 - state.base\n"
            "        };\n"
            "        self.lock().job_tx = None;\n",
        )],
        SERVICE,
    ),
    (
        "watermark: done does not wake the readers it satisfies",
        "src/progress.rs",
        [(
            "            waiter.unpark();\n        }\n    }\n\n    /// Every seq up to `seq` counts as done",
            "            let _ = waiter;\n        }\n    }\n\n    /// Every seq up to `seq` counts as done",
        )],
        SERVICE,
    ),
    (
        "watermark: a reader files itself after releasing the lock",
        "src/progress.rs",
        [(
            "        state.next_ticket += 1;\n",
            "        state.next_ticket += 1;\n        drop(state);\n        state = self.lock();\n",
        )],
        SERVICE,
    ),
    (
        "watermark: a panicking apply does not report its seq done",
        "src/progress.rs",
        [(
            "        self.0.done(self.1);\n",
            "        if !std::thread::panicking() {\n            self.0.done(self.1);\n        }\n",
        )],
        SERVICE,
    ),
    (
        "watermark: a reader returns before its seq is done",
        "src/progress.rs",
        [(
            "        if state.through >= seq {\n            return state.through;",
            "        if state.through + 1 >= seq {\n            return state.through;",
        )],
        SERVICE,
    ),
    (
        "gate: a thread looks at stopping before counting itself in accept",
        "vendor/tiny_http/src/inline/gate.rs",
        [(
            "        self.in_accept.fetch_add(1, Relaxed);\n"
            "        fence(SeqCst);\n"
            "        if self.stopping.load(Relaxed) {\n"
            "            self.in_accept.fetch_sub(1, Relaxed);\n"
            "            return false;\n"
            "        }\n",
            "        if self.stopping.load(Relaxed) {\n"
            "            return false;\n"
            "        }\n"
            "        self.in_accept.fetch_add(1, Relaxed);\n",
        )],
        FORK,
    ),
    (
        "gate: the fence on the way into accept removed",
        "vendor/tiny_http/src/inline/gate.rs",
        [(
            "        self.in_accept.fetch_add(1, Relaxed);\n        fence(SeqCst);\n",
            "        self.in_accept.fetch_add(1, Relaxed);\n",
        )],
        FORK,
    ),
    (
        "gate: stop's fence removed",
        "vendor/tiny_http/src/inline/gate.rs",
        [(
            "        self.stopping.store(true, Release);\n        fence(SeqCst);\n",
            "        self.stopping.store(true, Release);\n",
        )],
        FORK,
    ),
    (
        "gate: a connection looks at stopping before marking itself idle",
        "vendor/tiny_http/src/inline/gate.rs",
        [(
            "        let _ = state.compare_exchange(BUSY, IDLE, Relaxed, Relaxed);\n"
            "        fence(SeqCst);\n"
            "        !self.stopping.load(Relaxed)\n",
            "        let stopping = self.stopping.load(Relaxed);\n"
            "        let _ = state.compare_exchange(BUSY, IDLE, Relaxed, Relaxed);\n"
            "        !stopping\n",
        )],
        FORK,
    ),
    (
        "gate: the fence on the way to idle removed",
        "vendor/tiny_http/src/inline/gate.rs",
        [(
            "        let _ = state.compare_exchange(BUSY, IDLE, Relaxed, Relaxed);\n"
            "        fence(SeqCst);\n",
            "        let _ = state.compare_exchange(BUSY, IDLE, Relaxed, Relaxed);\n",
        )],
        FORK,
    ),
    (
        "gate: going idle marks a connection idle whatever it was",
        "vendor/tiny_http/src/inline/gate.rs",
        [(
            "        let _ = state.compare_exchange(BUSY, IDLE, Relaxed, Relaxed);\n",
            "        state.store(IDLE, Relaxed);\n",
        )],
        FORK,
    ),
    (
        "gate: a head begins a request on a connection stop closed",
        "vendor/tiny_http/src/inline/gate.rs",
        [(
            "state.compare_exchange(IDLE, BUSY, AcqRel, Acquire).is_ok()",
            "{\n        state.store(BUSY, Relaxed);\n        true\n    }",
        )],
        FORK,
    ),
]


def run_models(args):
    env = dict(os.environ)
    env["RUSTFLAGS"] = "--cfg loom"
    env["CARGO_TARGET_DIR"] = str(ROOT / "target" / "loom")
    env.setdefault("LOOM_MAX_PREEMPTIONS", "3")
    env["RUST_BACKTRACE"] = "0"
    command = ["cargo", "test", "--release", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    if "could not compile" in output:
        sys.exit(f"a mutant did not compile; fix its text in {__file__}:\n{output[-3000:]}")
    return done.returncode == 0, output


def why(output):
    """The failing model and loom's message, e.g. "deadlock; threads = ..."."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("thread '") and "panicked at" in line and i + 1 < len(lines):
            model = line.split("'")[1].rsplit("::", 1)[-1]
            return f"{model}: {lines[i + 1].strip()[:110]}"
    return "the test binary failed"


def main():
    selected = [m for m in MUTANTS if len(sys.argv) < 2 or sys.argv[1] in m[0]]
    for args in {tuple(m[3]) for m in selected}:
        passed, output = run_models(list(args))
        if not passed:
            sys.exit(f"the unmutated models fail ({' '.join(args)}):\n{output[-3000:]}")
    survivors = 0
    for name, path, edits, args in selected:
        file = ROOT / path
        original = file.read_text()
        mutated = original
        for old, new in edits:
            if mutated.count(old) != 1:
                sys.exit(f"mutant {name!r}: its text is not in {path} exactly once; update it")
            mutated = mutated.replace(old, new)
        try:
            file.write_text(mutated)
            passed, output = run_models(args)
        finally:
            file.write_text(original)
        if passed:
            survivors += 1
            print(f"SURVIVED  {name}")
        else:
            print(f"caught    {name}\n          {why(output)}")
    print(f"{len(selected) - survivors} of {len(selected)} mutants caught")
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
