"""The benchmark scripts still run against today's library: a stale call shows up here, not on a lent GPU.

A child process that cannot import MLflow, Optuna or Opacus (as on the GPU
image, ``benchmarks/gpu.sh``) imports every script in ``benchmarks/`` and
runs the cheapest ones at a tiny size with ``--no-write``; RESULTS.md must
come out unchanged. A child, too, because the scripts set the process's
malloc (``mia.allocator``), which a test process should not inherit. The
flags of each script's usage line, of RESULTS.md's recorded commands and of
gpu.sh must be ones the script accepts.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

SCRIPT = textwrap.dedent("""
    import importlib.abc, importlib.util, sys
    from dataclasses import replace
    from pathlib import Path

    import torch

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("mlflow", "optuna", "opacus"):
                raise ImportError(f"{name} is blocked")

    sys.meta_path.insert(0, Block())
    torch.set_num_threads(min(2, torch.get_num_threads()))
    sys.path.insert(0, "benchmarks")
    bench = {}
    for path in sorted(Path("benchmarks").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        bench[path.stem] = sys.modules[path.stem] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench[path.stem])

    def main(name, *args):
        sys.argv = [f"{name}.py", *args, "--no-write"]
        bench[name].main()

    main("attack_scoring", "--samples", "400", "--models", "16", "--views", "2", "--population", "200",
         "--naive-samples", "20", "--repeats", "1")
    main("fl_round", "--device", "cpu", "--cases", "digits", "--rounds", "1")
    main("stack_ceiling", "--cases", "mlp", "--steps", "2", "--rounds", "1")
    cpu = torch.device("cpu")
    pool = bench["pool_throughput"].mlp_case(cpu, 2)  # train_many against train, one epoch
    bench["pool_throughput"].run_case(replace(pool, config=replace(pool.config, epochs=1)))
    split_ai = bench["split_ai_throughput"].mlp_case("cpu")  # SELENA's K sub-models, one epoch
    bench["split_ai_throughput"].run_case(replace(split_ai, config=replace(split_ai.config, epochs=1)))
    if not torch.cuda.is_available():
        for name in ("cuda_step", "cuda_compile_smoke", "wrn_pool"):
            try:
                main(name)
            except SystemExit as done:
                assert "needs a CUDA device" in str(done.code), (name, done.code)
            else:
                raise AssertionError(f"{name} ran without CUDA")
    print("extras", sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "optuna", "opacus"}))
""")


def test_benchmarks_import_and_the_cheapest_run_without_writing_results():
    results = (BENCH / "RESULTS.md").read_bytes()
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "extras []"
    assert (BENCH / "RESULTS.md").read_bytes() == results, "a benchmark wrote RESULTS.md despite --no-write"


def accepted_flags() -> dict[str, set[str]]:
    return {p.name: set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", p.read_text()))
            for p in BENCH.glob("*.py") if p.name != "common.py"}


def test_recorded_and_documented_commands_use_flags_the_scripts_accept():
    accepted = accepted_flags()
    commands = []  # (where, script, the command's arguments)
    for name in accepted:
        doc = (BENCH / name).read_text().split('"""')[1]
        usage = doc[doc.find("    python benchmarks/"):] if "    python benchmarks/" in doc else ""
        commands += [(f"{name}'s docstring", script, args)
                     for script, args in re.findall(r"python benchmarks/(\w+\.py)(.*?)(?=python benchmarks/|\Z)",
                                                    usage, re.DOTALL)]
    commands += [("RESULTS.md", script, args) for script, args in
                 re.findall(r"`python benchmarks/(\w+\.py)([^`]*)`", (BENCH / "RESULTS.md").read_text())]
    commands += [("gpu.sh", script, args) for script, args in
                 re.findall(r"\$PY benchmarks/(\w+\.py)([^|\n]*)", (BENCH / "gpu.sh").read_text())]
    assert len(commands) > 20
    stale = [f"{where}: {script}{args.strip() and ' ' + ' '.join(args.split())}" for where, script, args in commands
             if script not in accepted or set(re.findall(r"--[a-z][\w-]*", args)) - accepted[script]]
    assert not stale, stale
