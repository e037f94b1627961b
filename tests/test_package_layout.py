"""Invariants of the package's layout (issue 17): one boundary to the ops, no import cycle, no
module reaching into another's private names, no function-level import unless lazy on purpose, the
Python mirrors of the C++ enums equal to the C++, and modules small enough to read."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "validated_loss"
# "functional", "tools.data", "tools" (its __init__), "__init__" (the package's)
MODULES = {".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__") or "__init__": path
           for path in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _package_of(name):
    """The package a module's relative imports start from (dotted, "" for validated_loss itself)."""
    path = MODULES[name]
    parts = list(path.relative_to(PACKAGE).parent.parts)
    return ".".join(parts)


def _package_imports(tree, name=None):
    """(module imported, names imported from it, node, at top level?) for each import of the package;
    modules are named as in MODULES."""
    top_level = set(map(id, tree.body))
    here = _package_of(name) if name else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".") if here else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "validated_loss":
                target = node.module.removeprefix("validated_loss").lstrip(".")
            else:
                continue
            if node.module is None or target == "" or target in ("tools",) and not node.module:
                for alias in node.names:  # from . import a, b: modules
                    module = f"{target}.{alias.name}".lstrip(".")
                    yield module, [], node, id(node) in top_level
            else:
                yield target, [a.name for a in node.names], node, id(node) in top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("validated_loss."):
                    yield alias.name.removeprefix("validated_loss."), [], node, id(node) in top_level


def test_no_import_cycle():
    graph = {name: {m for m, _, _, _ in _package_imports(tree, name) if m in MODULES and m != name}
             for name, tree in TREES.items()}
    graph["__init__"] = set()  # importing a submodule runs __init__ first: that edge is not a cycle
    graph["tools"] = set()
    assert graph["functional"] and graph["tools.data"], "the import graph was not read"
    state, path = {}, []

    def visit(name):
        state[name] = "open"
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(other):] + [other]))
            if other not in state:
                visit(other)
        path.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_errors_module_imports_nothing_from_the_package():
    assert list(_package_imports(TREES["errors"], "errors")) == []


def test_the_core_never_imports_the_tools():
    shims = {"data", "distributed", "patching", "memory", "__init__"}  # the tools' public import paths
    for name, tree in TREES.items():
        if name.startswith("tools") or name in shims:
            continue
        for module, _, _, _ in _package_imports(tree, name):
            assert not module.startswith("tools") and module not in shims, f"{name}.py imports {module}"


def test_only_ops_module_touches_torch_ops():
    for name, tree in TREES.items():
        if name == "_ops":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert not (node.value.id == "torch" and node.attr == "ops"), f"{name}.py uses torch.ops"
                assert not (node.value.id == "_ops" and node.attr == "ops"), f"{name}.py uses _ops.ops"
        for module, names, _, _ in _package_imports(tree, name):
            assert not (module == "_ops" and "ops" in names), f"{name}.py imports _ops.ops"


def test_no_module_uses_another_modules_private_names():
    allowed = {"_C"}  # the compiled extension module (_library loads it)
    for name, tree in TREES.items():
        imported = {}
        for module, names, node, _ in _package_imports(tree, name):
            for alias in getattr(node, "names", []):
                if module.split(".")[-1] == alias.name and not names:
                    imported[alias.asname or alias.name] = module
            for n in names:
                assert not (n.startswith("_") and n not in allowed and not n.startswith("__")), \
                    f"{name}.py imports {module}.{n}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported:
                attr = node.attr
                assert not (attr.startswith("_") and not attr.startswith("__") and attr not in allowed), \
                    f"{name}.py uses {imported[node.value.id]}.{attr}"


def test_function_level_imports_say_why_they_are_lazy():
    for name, tree in TREES.items():
        lines = MODULES[name].read_text().splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not _in_module_body(tree, node):
                context = " ".join(lines[max(0, node.lineno - 5):node.lineno])
                assert "lazy" in context.lower(), f"{name}.py:{node.lineno}: a function-level import without a reason"


def _in_module_body(tree, target):
    """Module-level imports inside try/if blocks count as module level."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if node is target:
            return True
        if isinstance(node, (ast.Try, ast.If)):
            stack += node.body + node.orelse + getattr(node, "finalbody", [])
            for handler in getattr(node, "handlers", []):
                stack += handler.body
    return False


def test_modules_are_small():
    for name, path in MODULES.items():
        assert len(path.read_text().splitlines()) <= 520, f"{name}.py has grown past about 500 lines"


def test_enums_match_the_cpp():
    from validated_loss._ops import Reduction, Validate
    from validated_loss import _status

    xent_row = (ROOT / "csrc" / "xent_row.h").read_text()
    found = dict(re.findall(r"kReduction(\w+) = (\d+)", xent_row))
    assert {k.upper(): int(v) for k, v in found.items()} == {r.name: r.value for r in Reduction}
    assert [Reduction(i).label for i in range(3)] == ["none", "mean", "sum"]

    ops_cpp = (ROOT / "csrc" / "ops.cpp").read_text()
    documented = re.search(r"validate\s+0 off, 1 sync, 2 deferred", ops_cpp)
    assert documented, "csrc/ops.cpp no longer documents validate as 0 off, 1 sync, 2 deferred"
    assert (Validate.OFF, Validate.SYNC, Validate.DEFERRED) == (0, 1, 2)

    status_h = (ROOT / "csrc" / "status.h").read_text()
    cpp_fields = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).upper(): int(v)
                  for k, v in re.findall(r"kStatus(\w+) = (\d+)", status_h)}
    py_fields = {k.removeprefix("STATUS_"): v for k, v in vars(_status).items() if k.startswith("STATUS_")}
    assert {k.replace("NON_FINITE", "NONFINITE"): v for k, v in cpp_fields.items()} == py_fields


def test_op_errors_are_built_from_fields_not_read_back_from_text():
    import torch

    import validated_loss as vl

    with pytest.raises(vl.TargetOutOfRangeError) as info:
        vl.cross_entropy(torch.zeros(2, 3, 4), torch.tensor([[0, 1, 2, 3], [5, 0, 0, -7]]), ignore_index=1)
    error = info.value
    assert (error.position, error.value, error.count, error.num_classes, error.ignore_index) == ((0, 3), 3, 3, 3, 1)
    logits = torch.zeros(3, 4)
    logits[1, 2] = float("inf")
    logits[2, 0] = float("nan")
    with pytest.raises(vl.NonFiniteLogitsError) as info:
        vl.cross_entropy(logits, torch.tensor([0, 1, 2]), check_finite=True)
    assert (info.value.row, info.value.column, info.value.count) == (1, 2, 2)
    # A message alone is only a message: nothing parses it.
    assert vl.TargetOutOfRangeError(str(error)).position is None
    assert "import re" not in (PACKAGE / "errors.py").read_text()


def test_every_subpackage_is_listed_for_installation():
    listed = re.search(r"^packages = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    wanted = {".".join(("validated_loss",) + path.relative_to(PACKAGE).parent.parts)
              for path in PACKAGE.rglob("__init__.py")}
    assert wanted == {name.strip().strip('"') for name in listed.split(",")}


def test_architecture_lists_the_core_in_import_order():
    """docs/ARCHITECTURE.md lists the core's modules so that each imports only modules below it."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = text[text.index("validated_loss/                  the core"):text.index("validated_loss/tools/ ")]
    listed = [m.group(1) for m in re.finditer(r"^  (\w+)\.py ", block, re.M)]
    core = {name for name in MODULES if "." not in name and name not in ("data", "distributed", "patching", "memory",
                                                                         "tools", "_build_info")}
    assert set(listed) == core
    position = {name: i for i, name in enumerate(listed)}
    for name in listed:
        if name in ("__init__", "__main__"):
            continue
        for module, _, _, _ in _package_imports(TREES[name], name):
            if module in position:
                assert position[module] > position[name], f"{name}.py imports {module}, listed above it"


def test_import_leaves_the_compiler_stack_unimported():
    """`import validated_loss` costs little on top of `import torch` (issue 16): nothing heavy that a
    call may never need is imported. torch._dynamo alone (sympy, inductor's config, ...) took longer
    than torch; torch.compile imports it when it is used. Structural, not timed."""
    import subprocess
    import sys

    heavy = ("torch._dynamo", "torch._inductor", "sympy", "torch._functorch.aot_autograd")
    code = ("import sys, torch; before = set(sys.modules); import validated_loss; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"import validated_loss imported {out.stdout.strip()}"


def test_compiler_marks_are_dynamos():
    """_compiler marks functions as torch.compiler would, without importing dynamo at import time:
    the constant mark is the attribute dynamo sets, and a disabled function runs eagerly (a graph
    break) inside a compiled function."""
    import torch
    import torch._dynamo

    from validated_loss import _compiler

    def marked():
        return 0

    def plain():
        return 0

    before = set(vars(plain))
    torch._dynamo.assume_constant_result(plain)
    assert set(vars(plain)) - before == {_compiler.CONSTANT_MARK}
    assert getattr(_compiler.assume_constant_result(marked), _compiler.CONSTANT_MARK) is True

    seen = []

    @_compiler.disable
    def eager_only(x):
        seen.append(torch.compiler.is_compiling())
        return x * 2

    def f(x):
        return eager_only(x + 1) - 1

    torch._dynamo.reset()
    x = torch.ones(3)
    torch.testing.assert_close(torch.compile(f, backend="eager")(x), f(x))
    assert seen == [False, False]  # run, never traced: once compiled, once eagerly
