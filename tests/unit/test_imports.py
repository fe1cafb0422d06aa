"""The block pool, KV manager and scheduler import without torch (the package is lazy)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def test_kv_and_scheduler_import_without_torch() -> None:
    code = ("import sys\n"
            "import thinkstream.kv.block_pool, thinkstream.kv.manager, thinkstream.engine.scheduler\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "print(len(loaded))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stdout


def test_the_package_still_exports_the_api_lazily() -> None:
    import thinkstream

    assert thinkstream.LLM.__module__ == "thinkstream.llm"
    assert thinkstream.SamplingParams.__name__ == "SamplingParams"
    assert sorted(thinkstream.__all__) == sorted([
        "LLM", "LLMEngine", "SamplingParams", "EngineConfig", "ModelConfig", "RequestOutput",
        "CompletionOutput", "Logprob", "RequestError", "ParamError", "SpeculativeConfig"])
    assert thinkstream.SpeculativeConfig.__module__ == "thinkstream.speculative.config"


# ------------------------------------------------------------ import direction
SRC = Path(__file__).resolve().parents[2] / "src" / "thinkstream"
# Lower layers never import the ones above them (features, front-ends, server).
LOWER = ("kv", "engine", "worker", "attention", "models", "kernels", "loading")
UPPER = ("streaming", "thinking", "parallel", "server", "bench", "llm", "async_llm", "cli")


def _module_imports() -> dict[str, set[str]]:
    """Module -> thinkstream modules it imports at run time (``TYPE_CHECKING`` blocks are
    left out; function-local imports count)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(("thinkstream", *parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and getattr(node.test, "id", None) == "TYPE_CHECKING"
                for n in ast.walk(node)}
        deps = graph.setdefault(name, set())
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("thinkstream"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("thinkstream"))
    return graph


def test_lower_layers_never_import_features_or_front_ends() -> None:
    def layer(module: str) -> str:
        return (module.split(".") + [""])[1]  # "" for the package itself

    upward = [(m, d) for m, deps in _module_imports().items() for d in deps
              if layer(m) in LOWER and layer(d) in UPPER]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = _module_imports()
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for d in sorted(graph.get(m, ())):
            if d in graph and d != m:
                visit(d, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_no_module_imports_another_modules_private_names() -> None:
    private = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("thinkstream"):
                private += [(str(path.relative_to(SRC)), node.module, a.name)
                            for a in node.names if a.name.startswith("_")]
    assert private == []


def test_the_cli_parses_without_torch() -> None:
    """Building the CLI's parsers loads no torch, so ``--help`` and argument errors answer in
    ~0.2 s: ``thinkstream --help`` / ``run`` took ~3 s (``thinkstream.loading`` imported the
    checkpoint loader for ``loading.errors``, and the bench arguments were registered for
    every command), ``bench --help`` ~2.7 s (the side-by-side and parallel benchmarks
    imported torch at their top); every ``bench <sub> --help`` and ``serve --help`` too."""
    code = ("import contextlib, io, sys\n"
            "from thinkstream.cli import build_parser\n"
            "build_parser('run').parse_args(['run', 'hi'])\n"
            "assert '  bench ' in build_parser('--help').format_help()\n"
            "def helped(argv):\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
            "        build_parser(argv[0]).parse_args(argv)\n"
            "    return buf.getvalue()\n"
            "subs = helped(['bench', '--help']).split('{')[1].split('}')[0].split(',')\n"
            "for sub in subs:\n"
            "    assert helped(['bench', sub, '--help']).startswith(f'usage: thinkstream bench {sub} '), sub\n"
            "assert helped(['serve', '--help']).startswith('usage: thinkstream serve ')\n"
            "print(len(subs), sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "12 []", out.stdout
