"""Which of featbench's files one frame passes through, from ``featbench predict`` to its CSV row.

    python benchmarks/trace_predict.py --workspace WS --run RUN --input FRAME.png [--dataset synth]

Runs ``featbench predict FRAME --run RUN`` in this process (the command line's own entry,
:func:`featbench.app.cli.main`) twice: once to import every module (imports run module code,
which is not the path of a frame), then under a profiler that follows only featbench's own code
(the ``featbench``, ``extract`` and ``classify`` packages; threads included). For each thread it
keeps the innermost featbench frame of the stack and records every change of its file: the
path of control through the project's files. It prints one JSON object:

``files``
    the project files visited (any thread), in order of first visit;
``switches``
    changes of file on the main thread's path (calls into another file and returns from it);
``returns``
    those switches that go back into a file the path had already left (what makes code hard to
    follow: the reader returns to a file they have read);
``distinct_edges``
    the distinct (from file, to file) pairs among the switches (a loop over AUs repeats its
    switches; this counts each once);
``learn_or_training_files``
    the visited files that train and only train (``classify/learn/``, :data:`TRAINING_FILES`):
    none, since loading a run's model is the inference side's (``classify/loaders.py``);
``path``
    the main thread's path, consecutive visits of one file collapsed.

Compare two versions by running it with each on its PYTHONPATH (the same workspace and input).
"""

import argparse
import contextlib
import json
import sys
import tempfile
import threading
from pathlib import Path


def _project_root():
    import featbench

    return Path(featbench.__file__).resolve().parents[1]


#: what trains and only trains (besides ``classify/learn/``), as tests/test_layers.py says
TRAINING_FILES = ("classify/finetune.py", "classify/training.py", "classify/lstm.py",
                  "classify/transfer.py", "classify/codemethods.py", "classify/driver.py",
                  "classify/run.py", "classify/plan.py", "classify/scale.py")

#: where the path starts: the predict command's function (argument parsing before it is left out)
START = ("featbench/app/commands/predict.py", "_run")


class PathTracer:
    """A profile function that records, per thread, the project files control passes through,
    from the first call of :data:`START` on."""

    def __init__(self, root, start=START):
        self.root, self.start = str(root) + "/", tuple(start)
        self.packages = tuple(self.root + p + "/" for p in ("featbench", "extract", "classify"))
        self.stacks, self.paths, self.first = {}, {}, {}
        self.started = False

    def _ours(self, filename):
        return filename.startswith(self.packages)

    def __call__(self, frame, event, arg):
        if event not in ("call", "return"):
            return
        name = frame.f_code.co_filename
        if not self._ours(name):
            return
        if not self.started:
            if event != "call" or (name[len(self.root):], frame.f_code.co_name) != self.start:
                return
            self.started = True
        tid = threading.get_ident()
        stack = self.stacks.setdefault(tid, [])
        if event == "call":
            stack.append(name)
            self.first.setdefault(name[len(self.root):], len(self.first))
        elif stack:
            stack.pop()
        here = stack[-1][len(self.root):] if stack else None
        path = self.paths.setdefault(tid, [])
        if here is not None and (not path or path[-1] != here):
            path.append(here)


def trace(argv, root, start=START):
    """Run the CLI with ``argv`` (its output to stderr) once to import what it uses, then again
    under a :class:`PathTracer`; return the tracer and the traced run's exit status."""
    from featbench.app.cli import main

    with contextlib.redirect_stdout(sys.stderr):
        main(argv)
        tracer = PathTracer(root, start)
        threading.setprofile(tracer)
        sys.setprofile(tracer)
        try:
            status = main(argv)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    return tracer, status


def summary(tracer):
    """The JSON-ready counts of a finished trace (see the module docstring)."""
    main_path = tracer.paths.get(threading.main_thread().ident, [])
    seen, returns = set(), 0
    for i, f in enumerate(main_path):
        returns += f in seen and i > 0
        seen.add(f)
    return {"files": sorted(tracer.first, key=tracer.first.get), "n_files": len(tracer.first),
            "switches": max(len(main_path) - 1, 0), "returns": returns,
            "distinct_edges": len(set(zip(main_path, main_path[1:]))),
            "learn_or_training_files": sorted(f for f in tracer.first if f.startswith("classify/learn/")
                                              or f in TRAINING_FILES),
            "path": main_path}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--input", required=True, help="one image: one frame")
    p.add_argument("--dataset", default="synth")
    p.add_argument("--start", default=":".join(START), metavar="FILE:FUNCTION",
                   help="where the path starts (default: the predict command's function); e.g. "
                        "featbench/apply/pipeline.py:stream for the frames' part alone")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tracer, status = trace(["--workspace", args.workspace, "predict", args.input, "--run",
                                args.run, "--dataset", args.dataset, "--out", f"{tmp}/one.csv",
                                "--device", "cpu", "--quiet", "--force"], _project_root(),
                               args.start.split(":"))
        rows = Path(tmp, "one.csv").read_text().splitlines() if status == 0 else []
    if status != 0:
        raise SystemExit(f"featbench predict failed (status {status})")
    print(json.dumps({"root": str(_project_root()), "run": args.run, "start": args.start,
                      "csv_rows": len(rows) - 1,
                      **summary(tracer)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
